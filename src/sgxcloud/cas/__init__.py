"""sgxcloud CAS: enclaves prove what they are, then receive their configuration.

How to use (the public API; everything else is an implementation detail)::

    from sgxcloud.cas.evidence import load_evidence, DefaultVerifier, make_simulated_evidence
    from sgxcloud.cas.collateral import FileCollateral, PccsCollateral
    from sgxcloud.cas.policy import load_policy, evaluate, check_import, policy_hash

    verifier = DefaultVerifier(FileCollateral("collateral.json"))  # or PccsCollateral(url, cache)
    verified = verifier.verify(load_evidence("quote.bin"), now=int(time.time()))
    policy = load_policy(open("policy.yaml").read())
    decision = evaluate(policy.services["web"], verified)
    if not decision.accepted:
        print(decision.reasons)          # every reason, never just the first

Modules:

- ``sgxcloud.cas.errors``: ``CasError`` and its verdicts ``EvidenceError``
  (``MalformedEvidenceError``, ``NonceRejected``, ``BindingError``,
  ``AttestationRejected``), ``CollateralError``, ``PolicyError`` (with field
  paths), ``AccessDenied`` (``AuthenticationError``), ``ConflictError``,
  ``ProtocolError`` (``MalformedAttestation``), ``NotReady`` (``Busy``),
  ``NotFound``, ``ConfigError`` (also an ``InputError``), ``TlsSetupError``,
  ``SecretsError`` (``MasterKeyError``).  Every error of the CAS derives from
  ``CasError``: the store's (``StoreError``, ``DuplicateRow``,
  ``BackupError``) are in ``sgxcloud.cas.store.errors``, the clients' in
  ``sgxcloud.cas.client.errors``.
- ``sgxcloud.cas.evidence``: ``Evidence``, ``VerifiedEvidence``,
  ``EvidenceVerifier``, ``DcapVerifier`` (dcap-qvl), ``SimulatedVerifier``,
  ``DefaultVerifier``, ``RejectingVerifier``, ``load_evidence``,
  ``make_simulated_evidence``, and ``check_evidence`` -> ``AttestationReport``
  (verify + optional policy verdict, as ``sgxcloud attest verify`` prints it).
  Simulated evidence is always ``simulated=True`` and rejected unless a
  service sets ``allow_simulated``.
- ``sgxcloud.cas.collateral``: ``CollateralSource``, ``FileCollateral``,
  ``PccsCollateral`` (Intel PCS v4 API, cached within validity times),
  ``collateral_window``.
- ``sgxcloud.cas.policy``: ``load_policy``, ``Policy``, ``ServicePolicy``,
  ``SecretSpec``, ``evaluate``/``Decision``, ``check_import``,
  ``policy_hash``, placeholder helpers (``{{secret:NAME[:FORMAT]}}``),
  principal ids for access rules.

The service half (storage, HTTPS API, attest-and-fetch protocol, client,
audit log, secret generation) builds on these.
"""
