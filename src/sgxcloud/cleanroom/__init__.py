"""Confidential data clean room: the core library.

Data providers (a bank, a telecom, a retailer...) send their data only to
attested enclaves; the coordinator enclave matches people across providers
and releases aggregates only, under k-anonymity, optional differential
privacy and a differencing check, each answer signed and logged.  This
package is that core; nodes, transport, API, SDK and CLI are built on it.

Public interfaces (stable; imported from the sub-modules named):

``sgxcloud.cleanroom.definition``
    ``load_definition(path) / parse_definition(text) / definition_from_dict(doc)
    -> Definition`` — YAML → JSON Schema (``definition_schema()``, also in
    docs/cleanroom/definition.schema.json) → semantic checks.  Errors are
    ``DefinitionError(field, message)`` with a path like ``analyses[1].breakdowns[0]``.
    ``Definition.definition_hash() -> str`` (hex SHA-256 of the canonical JSON;
    any change changes it), ``.enclaves.coordinator / .node`` (``EnclavePin``
    with ``.matches(EnclaveIdentity)``), ``.enclaves.allow_simulated``,
    ``.providers``, ``.dataset("bank.customers")``, ``.columns_needed(ref)``
    (the only columns a node may send), ``.privacy``.

``sgxcloud.cleanroom.approvals``
    ``approve(definition, party, private_key) -> Approval`` (Ed25519 over
    definition hash + coordinator and node MRENCLAVE), ``Approval.to_dict /
    from_dict``, ``verify_approvals(definition, approvals) -> ApprovalStatus
    (valid, missing, invalid, complete)``, ``require_approvals(...)`` raises
    ``ApprovalError``.  Key helpers: ``generate_private_key``,
    ``encode_public_key`` (``ed25519:<base64>``), ``decode_public_key``,
    ``private_key_to_pem`` / ``private_key_from_pem``.

``sgxcloud.cleanroom.identifiers`` (runs in the provider's node enclave)
    ``prepare_batch(dataset, batch, key, columns=None) -> (RecordBatch,
    PrepareReport)``: keeps ``columns`` (pass ``definition.columns_needed(ref)``),
    normalises identifiers (column-wise where exact, else per value) and
    replaces each by its keyed identifier: AES-CMAC under ``key`` (32 bytes,
    ``new_key()``; only ever inside attested enclaves) truncated to ``int64``;
    ``key`` may be a ``Rekeyer(key)`` reused across batches.  Invalid
    identifiers are counted, never echoed.  ``prepared_schema(dataset,
    columns)`` is what the engine expects.  ``normalise(kind, value, region)``,
    ``normalise_array(kind, values, region) -> (array, missing)``,
    ``keyed_hash(key, kind, value) -> int``, ``Rekeyer(key).hash_many(kind,
    values) -> int64 array``.

``sgxcloud.cleanroom.engine`` (runs in the coordinator enclave)
    ``Engine(definition, workdir, *, signing_key=None, memory_limit="512MB",
    threads=2)`` (raises ``CleanroomError`` for a workdir whose engine
    database has another format: refused, never reused);
    ``engine.ingest(provider, dataset, table | RecordBatchReader | iterable
    of RecordBatch) -> IngestReport`` (atomic: a bad batch leaves
    nothing; re-ingesting a dataset replaces it; the batch columns must be
    exactly ``prepared_schema(dataset, definition.columns_needed(ref))``);
    ``engine.run(query | dict, analyst) -> Result``; ``engine.budget(analyst)
    -> BudgetStatus(total, spent, remaining)``; ``engine.datasets() -> {ref:
    rows}``;
    ``engine.public_key`` (``ed25519:...``, to bind into attestation);
    ``engine.audit`` (``AuditLog``); ``engine.close()``.  Queries:
    ``parse_query(json_dict)`` → ``AudienceSizeQuery(analysis, filter)``,
    ``OverlapQuery(analysis, datasets, filter)``, ``CampaignLiftQuery(analysis,
    filter, breakdown)``; filters as a JSON tree or text
    (``parse_filter_text("bank.customers.premium_card = true AND ...")``).
    Refusals: ``QueryRefused(reason, message)`` with reason in
    ``not_allowed | budget | differencing | suppressed`` (``suppressed`` only
    when *every* cell would be below k; otherwise cells are flagged
    individually); malformed queries: ``QueryError(field, message)``; the
    memory limit hit: ``EngineLimitError`` (nothing released or kept).
    Cells: audience ``people``; overlap ``people`` with ``dims={"datasets":
    "a.b+c.d"}``; lift per ``{segment, arm}`` (``people, converters,
    conversion_rate, purchases, revenue, revenue_per_person``) and per
    ``{segment}`` (``conversion_lift_abs[_ci_low|_ci_high]``, ``..._rel``,
    ``conversion_p_value``, ``revenue_per_person_lift_abs|rel[...]``,
    ``revenue_p_value``, ``incremental_conversions|revenue[...]``); the
    overall segment is ``(all)``, people without a breakdown value ``(none)``.

``sgxcloud.cleanroom.results``
    ``Result`` (``cells`` of ``Cell(metric, value, dims, suppressed, noisy)``,
    ``definition_hash``, ``query``, ``privacy``, ``signer``, ``signature``;
    ``to_json / from_json``, ``value(metric, **dims)``),
    ``verify_result(result, coordinator_public_key, definition_hash=None)``
    raises ``ResultSignatureError``; ``load_result(path)`` reads one from a
    file (a non-text file is a ``ResultSignatureError`` too).  Format v2
    (``RESULT_FORMAT``) carries ``digest_key``; ``result_digest(result)`` is
    its audit-log digest (``hmac-sha256:...``, keyed: only holders of the
    result can compute or test it) and ``check_result_digest(result, digest)``
    raises ``ResultDigestError`` on a mismatch or an older unkeyed digest.

``sgxcloud.cleanroom.audit``
    ``AuditLog(path).append / entries / verify``, ``verify_chain(entries) ->
    head hash`` raises ``AuditChainError``.

``sgxcloud.cleanroom.datagen``
    ``generate(outdir, *, people=10_000, seed=7, fmt="parquet", chunk_rows=...)
    -> GeneratedData`` — synthetic bank / telecom / retailer files with a real
    lift effect, written in streams.

Errors all derive from ``sgxcloud.cleanroom.errors.CleanroomError`` (itself a
``SgxcloudError``), those of the attested channel and of signed requests
(``RequestRejected``, ``NonceStoreError``) from
``sgxcloud.cleanroom.transport.errors.TransportError``; their messages never
contain identifiers or data values.
"""
