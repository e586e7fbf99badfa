"""Identifier normalisation and re-keying, run by a provider's node in its enclave.

Normalisation rules (documented in docs/cleanroom/concepts.md):

* every identifier: Unicode NFKC, surrounding white space trimmed;
* e-mail: lower-cased whole; must look like ``local@domain.tld`` (no spaces,
  one ``@``, at most 254 characters).  For ``gmail.com`` and
  ``googlemail.com`` only — where Google documents that dots are ignored and
  ``+tag`` is a sub-address — dots are removed from the local part, a
  ``+tag`` is dropped and the domain becomes ``gmail.com``.  Other domains
  keep dots and ``+tag``: for them these may be different mailboxes;
* phone: parsed by ``phonenumbers`` (Google's libphonenumber metadata) with
  the dataset's ``default_phone_region`` for numbers written without a
  country code; it must be a valid number, and is written in E.164.  Numbers
  of the default region written as ``+<cc>…`` or ``<national prefix>…`` are
  checked against the same metadata's patterns directly (about 7× faster);
  tests show both paths always agree;
* customer id: trimmed, 1–128 printable characters, case kept.

Re-keying: AES-CMAC (NIST SP 800-38B) with AES-256 under a 32-byte key
that exists only inside attested enclaves, over ``kind NUL normalised-value``
so an e-mail and a customer id with the same text never collide.  The first
8 bytes of the MAC, as a signed 64-bit integer, are the keyed identifier:
joins on a machine word are several times faster and lighter than on
strings (EPC is scarce).  Without the key nobody can compute, invert or
collide them; two *different* identifiers share one by chance with
probability about N²/2⁶⁵ (one chance in ~15,000 among 50 million
identifiers), which would merge two people — a bounded error far below any
suppression threshold.  CMAC rather than HMAC-SHA256 because it batches:
a whole column goes through AES-NI at once (see :class:`Rekeyer`).

Batches are normalised column-wise with Arrow compute (RE2) for ASCII
values of the common shapes; everything else — non-ASCII text, unusual
phone shapes — takes the per-value functions below, and tests prove both
paths give the same result.

Invalid identifiers are counted per column and reported; the values are
never echoed.  A row left with no valid identifier is dropped and counted.
"""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sgxcloud.cleanroom import columns
from sgxcloud.cleanroom.definition import Dataset
from sgxcloud.cleanroom.errors import IngestError

KEY_BYTES = 32
HASH_TYPE = pa.int64()
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def new_key() -> bytes:
    """A fresh re-keying key; in production the coordinator enclave makes it
    and hands it only to attested nodes."""
    return secrets.token_bytes(KEY_BYTES)


def _clean(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip()


def normalise_email(value: str) -> str | None:
    text = _clean(value).lower()
    if len(text) > 254 or not _EMAIL.match(text):
        return None
    local, domain = text.rsplit("@", 1)
    if domain in GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        domain = "gmail.com"
        if not local:
            return None
    return f"{local}@{domain}"


def normalise_phone(value: str, default_region: str | None) -> str | None:
    text = _clean(value)
    if not text or len(text) > 40:
        return None
    fast = _fast_e164(text, default_region)
    if fast is not None:
        return fast
    return _parse_phone(text, default_region)


def _parse_phone(text: str, default_region: str | None) -> str | None:
    """libphonenumber's verdict: the authority (and ~40 µs per number)."""
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# Separators people write inside phone numbers; anything else takes the slow path.
_PHONE_SHAPE = re.compile(r"\+?[0-9][0-9 ().-]*")
_PHONE_SEPARATORS = str.maketrans("", "", " ().-")
_NUMBER_TYPES = (
    "mobile",
    "fixed_line",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


@dataclass(frozen=True)
class _RegionRules:
    """One region's validity rules from libphonenumber's metadata, compiled once."""

    country_code: str
    national_prefix: str | None
    general: tuple[re.Pattern[str], frozenset[int]]
    types: tuple[tuple[re.Pattern[str], frozenset[int]], ...]

    def valid(self, national: str) -> bool:
        if not _matches(national, *self.general):
            return False
        return any(_matches(national, *desc) for desc in self.types)


def _matches(national: str, pattern: re.Pattern[str], lengths: frozenset[int]) -> bool:
    return (not lengths or len(national) in lengths) and pattern.fullmatch(national) is not None


@functools.cache
def _region_rules(region: str | None) -> _RegionRules | None:
    """Rules for the fast path, or None where it cannot be exact (then always slow)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region) if region else None
    if (
        meta is None
        or meta.general_desc is None
        or (
            not meta.main_country_for_code
            and len(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(meta.country_code, ())) > 1
        )
    ):
        return None
    if meta.national_prefix_transform_rule:
        return None
    prefix = meta.national_prefix
    if (
        prefix
        and meta.national_prefix_for_parsing
        and not re.match(meta.national_prefix_for_parsing, prefix + "1")
    ):
        return None

    def compiled(desc) -> tuple[re.Pattern[str], frozenset[int]] | None:
        if desc is None or desc.national_number_pattern is None:
            return None
        lengths = frozenset(n for n in desc.possible_length if n > 0)
        return re.compile(desc.national_number_pattern), lengths

    general = compiled(meta.general_desc)
    if general is None:
        return None
    types = tuple(c for c in (compiled(getattr(meta, t, None)) for t in _NUMBER_TYPES) if c)
    return _RegionRules(str(meta.country_code), prefix, general, types)


def _fast_e164(text: str, default_region: str | None) -> str | None:
    """E.164 for the common shapes of numbers of the dataset's own region,
    without libphonenumber's full parser; None means "ask the parser".

    It only ever *accepts*: numbers written as ``+<cc><national>`` or
    ``<national prefix><national>`` whose national part libphonenumber's own
    patterns for that region call valid.  Everything else — other countries,
    extensions, letters, ``00`` prefixes, invalid numbers — goes to the parser,
    so the verdict never differs (tests compare both on generated numbers).
    """
    rules = _region_rules(default_region)
    if rules is None or not _PHONE_SHAPE.fullmatch(text):
        return None
    digits = text.translate(_PHONE_SEPARATORS)
    if digits.startswith("+" + rules.country_code):
        national = digits[1 + len(rules.country_code) :]
    elif rules.national_prefix and digits.startswith(rules.national_prefix):
        national = digits[len(rules.national_prefix) :]
    else:
        return None
    if not national or national[0] == "0" or not rules.valid(national):
        return None
    return f"+{rules.country_code}{national}"


def normalise_customer_id(value: str) -> str | None:
    text = _clean(value)
    if not 1 <= len(text) <= 128 or not text.isprintable():
        return None
    return text


def normalise(kind: str, value: Any, default_region: str | None = None) -> str | None:
    """Normalised form of one identifier, or None when it is missing or invalid."""
    if value is None:
        return None
    value = str(value)
    if kind == "email":
        return normalise_email(value)
    if kind == "phone":
        return normalise_phone(value, default_region)
    if kind == "customer_id":
        return normalise_customer_id(value)
    raise ValueError(f"unknown identifier kind {kind!r}")


def keyed_hash(key: bytes, kind: str, normalised: str) -> int:
    """The keyed identifier of one normalised value (see the module doc)."""
    return int(Rekeyer(key).hash_many(kind, pa.array([normalised], pa.string()))[0])


class Rekeyer:
    """AES-CMAC (NIST SP 800-38B) of a whole column of values at once.

    The standard algorithm, batched: values are grouped by their number of
    16-byte blocks, padded and tweaked with the subkeys K1/K2 as the standard
    says, and the CBC chain is run for every value of a group together, one
    AES-ECB call per block position (AES-NI through ``cryptography``).  About
    4× cheaper per value than a Python loop of HMAC-SHA256, which dominated a
    node's time; tests check every output equals ``cryptography``'s CMAC.
    """

    _PADS = pa.array([b"\x80" + b"\x00" * (n - 1) if n else b"" for n in range(16)], pa.binary())

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the re-keying key must be 32 bytes")
        self._aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 (CMAC)
        zero = np.zeros((1, 16), dtype=np.uint8)
        k1 = _double(bytes(self._encrypt(zero)[0]))
        self._k1 = np.frombuffer(k1, dtype=np.uint8)
        self._k2 = np.frombuffer(_double(k1), dtype=np.uint8)

    def _encrypt(self, blocks: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._aes.update(blocks.tobytes()), dtype=np.uint8).reshape(-1, 16)

    def hash_many(self, kind: str, values: pa.Array) -> np.ndarray:
        """Keyed identifiers (int64) of the non-null strings ``values``, in order."""
        prefix = pa.scalar(kind.encode() + b"\x00", pa.binary())
        raw = values.cast(pa.binary())
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        lengths = np.asarray(pc.binary_length(raw), dtype=np.int64) + len(prefix.as_py())
        blocks = np.maximum(1, (lengths + 15) // 16)
        complete = (lengths % 16 == 0) & (lengths > 0)
        padding = np.where(complete, 0, blocks * 16 - lengths)
        messages = pc.binary_join_element_wise(prefix, raw, pc.take(self._PADS, padding), b"")
        macs = np.empty((len(values), 16), dtype=np.uint8)
        for n in np.unique(blocks):
            rows = np.flatnonzero(blocks == n)
            group = pc.take(messages, rows)
            offsets = np.frombuffer(group.buffers()[1], dtype=np.int32)[
                group.offset : group.offset + len(group) + 1
            ]
            data = np.frombuffer(group.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            data = data.reshape(len(rows), n, 16).copy()
            data[:, -1] ^= np.where(complete[rows, None], self._k1, self._k2)
            state = np.zeros((len(rows), 16), dtype=np.uint8)
            for j in range(n):
                state = self._encrypt(state ^ data[:, j])
            macs[rows] = state
        # the first 8 bytes of each MAC, big-endian, as int64
        return macs[:, :8].copy().view(">i8").reshape(-1).astype(np.int64)


def _double(block: bytes) -> bytes:
    """Multiplication by x in GF(2^128), as CMAC derives its subkeys."""
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ 0x87
    return value.to_bytes(16, "big")


# -- node-side batch preparation ----------------------------------------------------


def prepared_schema(dataset: Dataset, columns: Sequence[str] | None = None) -> pa.Schema:
    """Arrow schema of what a node sends the coordinator for ``dataset``."""
    wanted = list(columns) if columns is not None else _declared(dataset)
    fields = []
    types = _column_types(dataset)
    for col in wanted:
        if col not in types:
            raise IngestError(f"{dataset.ref}: column {col} is not declared in the definition")
        fields.append(pa.field(col, types[col]))
    return pa.schema(fields)


def _declared(dataset: Dataset) -> list[str]:
    return (
        [i.column for i in dataset.identifiers]
        + [a.column for a in dataset.attributes]
        + list(dataset.event_columns)
    )


def _column_types(dataset: Dataset) -> dict[str, pa.DataType]:
    attr_types = {
        "boolean": pa.bool_(),
        "category": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
    }
    types: dict[str, pa.DataType] = {i.column: HASH_TYPE for i in dataset.identifiers}
    types.update({a.column: attr_types[a.type] for a in dataset.attributes})
    if dataset.group_column:
        types[dataset.group_column] = pa.string()
    if dataset.timestamp_column:
        types[dataset.timestamp_column] = TIMESTAMP_TYPE
    if dataset.amount_column:
        types[dataset.amount_column] = pa.float64()
    return types


@dataclass
class PrepareReport:
    """Counts only: never a value.  Merge reports of several batches with ``add``."""

    dataset: str
    rows_in: int = 0
    rows_out: int = 0
    rows_without_identifier: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    def add(self, other: PrepareReport) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.rows_without_identifier += other.rows_without_identifier
        for mine, theirs in ((self.invalid, other.invalid), (self.missing, other.missing)):
            for col, n in theirs.items():
                mine[col] = mine.get(col, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_without_identifier": self.rows_without_identifier,
            "invalid_identifiers": dict(self.invalid),
            "missing_identifiers": dict(self.missing),
        }


def prepare_batch(
    dataset: Dataset,
    batch: pa.RecordBatch | pa.Table,
    key: bytes | Rekeyer,
    columns: Sequence[str] | None = None,
) -> tuple[pa.RecordBatch, PrepareReport]:
    """Normalise and re-key identifiers, keep only ``columns`` (default: all
    declared), cast the rest to their declared types.

    Raises :class:`IngestError` for a missing column or a value that cannot be
    cast; invalid identifiers are nulled and counted, rows left without any
    identifier are dropped and counted.
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    schema = prepared_schema(dataset, columns)
    missing_cols = [f.name for f in schema if f.name not in table.column_names]
    if missing_cols:
        raise IngestError(
            f"{dataset.ref}: missing column(s) " + ", ".join(missing_cols),
            {"dataset": dataset.ref, "missing_columns": missing_cols},
        )
    report = PrepareReport(dataset.ref, rows_in=table.num_rows)
    kinds = {i.column: i.kind for i in dataset.identifiers}
    rekeyer = key if isinstance(key, Rekeyer) else Rekeyer(key)
    arrays: list[pa.Array] = []
    for fld in schema:
        column = table.column(fld.name)
        if fld.name in kinds:
            arrays.append(
                _rekey(
                    column, kinds[fld.name], dataset.default_phone_region, rekeyer, report, fld.name
                )
            )
        else:
            zone = dataset.timestamp_timezone if fld.name == dataset.timestamp_column else "UTC"
            arrays.append(_cast(column, fld.type, dataset.ref, fld.name, zone))
    prepared = pa.Table.from_arrays(arrays, schema=schema)
    id_cols = [c for c in schema.names if c in kinds]
    has_id = functools.reduce(pc.or_, [pc.is_valid(prepared[c]) for c in id_cols])
    check_values(dataset, prepared, has_id)
    kept = prepared.filter(has_id)
    report.rows_out = kept.num_rows
    report.rows_without_identifier = prepared.num_rows - kept.num_rows
    return _one_batch(kept), report


def _rekey(
    column: pa.ChunkedArray,
    kind: str,
    region: str | None,
    rekeyer: Rekeyer,
    report: PrepareReport,
    name: str,
) -> pa.Array:
    normalised, missing = normalise_array(kind, column.combine_chunks(), region)
    invalid = normalised.null_count - missing
    if invalid:
        report.invalid[name] = report.invalid.get(name, 0) + invalid
    if missing:
        report.missing[name] = report.missing.get(name, 0) + missing
    # Hashing every value costs less than finding the distinct ones first.
    present = np.asarray(normalised.is_valid(), dtype=bool)
    keyed = np.zeros(len(normalised), dtype=np.int64)
    keyed[present] = rekeyer.hash_many(kind, normalised.drop_null())
    return pa.array(keyed, type=HASH_TYPE, mask=~present)


# -- column-wise normalisation ------------------------------------------------------
#
# The vectorised rules cover ASCII values (for which NFKC changes nothing) of
# the common shapes and must agree exactly with the per-value functions above;
# every other value is handed to those.  Python's str.strip() and its regex
# ``\s`` treat these ASCII characters as white space:
_ASCII_SPACE = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_RE2_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "
_EMAIL_RE2 = rf"^[^@{_RE2_SPACE}]+@[^@{_RE2_SPACE}]+\.[^@{_RE2_SPACE}.]+$"
_CUSTOMER_ID_RE2 = r"^[\x20-\x7e]{1,128}$"  # str.isprintable() for ASCII
_PHONE_SHAPE_RE2 = r"^\+?[0-9][0-9 ().-]*$"


def normalise_array(
    kind: str,
    values: pa.Array,
    region: str | None = None,
) -> tuple[pa.Array, int]:
    """Normalised strings (null where missing or invalid) and the number missing.

    Same verdict as :func:`normalise` on every value, column-wise where it can.
    """
    if kind not in ("email", "phone", "customer_id"):
        raise ValueError(f"unknown identifier kind {kind!r}")
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return _normalise_each(kind, values.to_pylist(), region)
    values = values.cast(pa.string())
    ascii_ = pc.fill_null(pc.string_is_ascii(values), False)
    trimmed = pc.ascii_trim(values, _ASCII_SPACE)  # only ASCII rows' results are used
    blank = pc.fill_null(pc.equal(trimmed, ""), False)
    missing_mask = pc.or_(pc.is_null(values), pc.and_(ascii_, blank))
    if kind == "email":
        fast, handled = _emails(pc.ascii_lower(trimmed))
    elif kind == "phone":
        fast, handled = _phones(trimmed, region)
    else:  # customer id: every ASCII value is settled here
        printable = pc.fill_null(pc.match_substring_regex(trimmed, _CUSTOMER_ID_RE2), False)
        fast, handled = pc.if_else(printable, trimmed, pa.scalar(None, pa.string())), None
    if handled is None:
        handled = pa.array(np.ones(len(values), dtype=bool))
    settled = pc.or_(missing_mask, pc.and_(ascii_, pc.fill_null(handled, False)))
    out = pc.if_else(pc.or_(missing_mask, pc.invert(settled)), pa.scalar(None, pa.string()), fast)
    others = pc.indices_nonzero(pc.invert(settled))
    extra_missing = 0
    if len(others):
        rest, extra_missing = _normalise_each(kind, pc.take(values, others).to_pylist(), region)
        out = pc.replace_with_mask(out, pc.invert(settled), rest)
    missing = pc.sum(missing_mask).as_py() or 0
    return out, missing + extra_missing


def _normalise_each(kind: str, values: list[Any], region: str | None) -> tuple[pa.Array, int]:
    out: list[str | None] = []
    missing = 0
    seen: dict[Any, str | None] = {}  # the same odd value tends to recur (e.g. "12345")
    for value in values:
        if value is None or (isinstance(value, str) and not value.strip()):
            missing += 1
            out.append(None)
            continue
        if value not in seen:
            seen[value] = normalise(kind, value, region)
        out.append(seen[value])
    return pa.array(out, type=pa.string()), missing


def _emails(lowered: pa.Array) -> tuple[pa.Array, None]:
    """ASCII e-mails: every value is settled here (valid or invalid)."""
    valid = pc.fill_null(
        pc.and_(
            pc.less_equal(pc.utf8_length(lowered), 254),
            pc.match_substring_regex(lowered, _EMAIL_RE2),
        ),
        False,
    )
    # a valid address has one '@': its domain is Gmail's exactly when it ends so
    gmail = functools.reduce(
        pc.or_, [pc.fill_null(pc.ends_with(lowered, "@" + d), False) for d in sorted(GMAIL_DOMAINS)]
    )
    gmail = pc.and_(valid, gmail)
    out = pc.if_else(valid, lowered, pa.scalar(None, pa.string()))
    rows = pc.indices_nonzero(gmail)
    if len(rows):  # few rows: Gmail's dot and +tag rules on those only
        local = pc.struct_field(pc.extract_regex(pc.take(lowered, rows), r"^(?P<l>[^@]*)@"), "l")
        local = pc.replace_substring(pc.replace_substring_regex(local, r"\+.*$", ""), ".", "")
        address = pc.if_else(
            pc.equal(local, ""),
            pa.scalar(None, pa.string()),
            pc.binary_join_element_wise(local, "gmail.com", "@"),
        )
        out = pc.replace_with_mask(out, gmail, address)
    return out, None


def _phones(trimmed: pa.Array, region: str | None) -> tuple[pa.Array, pa.Array]:
    """ASCII phone numbers in the fast path's shapes (see :func:`_fast_e164`);
    ``handled`` is false for everything the full parser must judge."""
    too_long = pc.fill_null(pc.greater(pc.utf8_length(trimmed), 40), False)
    rules = _region_rules(region)
    if rules is None:
        return pa.nulls(len(trimmed), pa.string()), too_long
    shaped = pc.fill_null(pc.match_substring_regex(trimmed, _PHONE_SHAPE_RE2), False)
    digits = pc.replace_substring_regex(trimmed, r"[ ().-]", "")
    plus_cc = "+" + rules.country_code
    by_cc = pc.fill_null(pc.starts_with(digits, plus_cc), False)
    national = pc.if_else(
        by_cc, pc.utf8_slice_codeunits(digits, len(plus_cc)), pa.scalar(None, pa.string())
    )
    if rules.national_prefix:
        by_prefix = pc.and_(
            pc.invert(by_cc), pc.fill_null(pc.starts_with(digits, rules.national_prefix), False)
        )
        national = pc.if_else(
            by_prefix, pc.utf8_slice_codeunits(digits, len(rules.national_prefix)), national
        )
    usable = pc.and_(
        shaped,
        pc.fill_null(
            pc.and_(pc.not_equal(national, ""), pc.invert(pc.starts_with(national, "0"))), False
        ),
    )
    valid = pc.and_(usable, _rule_matches(national, rules.general))
    # valid for some number type: each type's patterns only on the rows no
    # earlier type took (mobile and fixed line first, which take nearly all)
    accepted = np.zeros(len(trimmed), dtype=bool)
    pending = np.asarray(pc.indices_nonzero(valid))
    for rule in rules.types:
        if not len(pending):
            break
        hit = np.asarray(_rule_matches(pc.take(national, pending), rule), dtype=bool)
        accepted[pending[hit]] = True
        pending = pending[~hit]
    accepted = pa.array(accepted)
    e164 = pc.binary_join_element_wise("+" + rules.country_code, national, "")
    return (pc.if_else(accepted, e164, pa.scalar(None, pa.string())), pc.or_(accepted, too_long))


def _rule_matches(national: pa.Array, rule: tuple[re.Pattern[str], frozenset[int]]) -> pa.Array:
    pattern, lengths = rule
    ok = pc.fill_null(pc.match_substring_regex(national, f"^(?:{pattern.pattern})$"), False)
    if lengths:
        ok = pc.and_(
            ok,
            pc.fill_null(
                pc.is_in(pc.utf8_length(national), pa.array(sorted(lengths), pa.int32())), False
            ),
        )
    return ok


def _cast(
    column: pa.ChunkedArray, target: pa.DataType, ref: str, name: str, timezone: str = "UTC"
) -> pa.Array:
    try:
        return columns.convert(column, target, timezone)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # Arrow's message quotes the offending value: report rows and the column
        # only, and drop the cause so no traceback carries the value either.
        found = columns.problem(column, name, target, timezone)
        raise IngestError(
            f"{ref}: column {name}: {found.count} value(s) cannot be read as {found.expected}; "
            f"accepted: {found.accepted}",
            {
                "dataset": ref,
                "column": name,
                "expected_type": found.expected,
                "bad_rows": list(found.rows),
                "bad_count": found.count,
                "accepted": found.accepted,
            },
        ) from None


def check_values(dataset: Dataset, table: pa.Table, has_id: pa.Array | None = None) -> None:
    """Declared values, bounds, arms and amounts, checked on the provider's side so
    the error names rows of the provider's file; rows without an identifier are
    dropped anyway and not checked.  Raises IngestError for the first column
    with a problem (rows only, never values)."""
    for column, problem, accepted, mask in _value_checks(dataset, table):
        if has_id is not None:
            mask = pc.and_(mask, has_id)
        hits = pc.indices_nonzero(pc.fill_null(mask, False))
        if len(hits):
            rows = hits.to_pylist()
            raise IngestError(
                f"{dataset.ref}: column {column}: {len(rows)} value(s) {problem}; "
                f"accepted: {accepted}",
                {
                    "dataset": dataset.ref,
                    "column": column,
                    "problem": problem,
                    "bad_rows": rows[: columns.MAX_ROWS_SHOWN],
                    "bad_count": len(rows),
                    "accepted": accepted,
                },
            )


def _value_checks(dataset: Dataset, table: pa.Table):
    """(column, problem, accepted, mask of offending rows) for each value rule."""
    names = table.column_names
    for attr in dataset.attributes:
        if attr.column not in names:
            continue
        column = table[attr.column]
        if attr.values:
            # an empty cell is an unknown value, not a wrong one
            yield (
                attr.column,
                "not among the declared values",
                ", ".join(attr.values),
                pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, pa.array(attr.values)))),
            )
        if attr.min is not None:
            yield (
                attr.column,
                f"below the declared min {attr.min:g}",
                f"values from {attr.min:g}",
                pc.less(column, attr.min),
            )
        if attr.max is not None:
            yield (
                attr.column,
                f"above the declared max {attr.max:g}",
                f"values up to {attr.max:g}",
                pc.greater(column, attr.max),
            )
    for col in dataset.event_columns:
        if col in names:
            yield (col, "empty", "a value in every row", pc.is_null(table[col]))
    if dataset.group_column and dataset.group_column in names:
        yield (
            dataset.group_column,
            "neither test nor control",
            "test, control",
            pc.invert(pc.is_in(table[dataset.group_column], pa.array(("test", "control")))),
        )
    if dataset.amount_column and dataset.amount_column in names:
        amount = table[dataset.amount_column]
        yield (
            dataset.amount_column,
            "negative or not a number",
            "amounts of 0 or more",
            pc.or_(pc.less(amount, 0.0), pc.is_nan(amount)),
        )


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
