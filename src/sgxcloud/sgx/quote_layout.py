"""Byte layout of an SGX ECDSA quote (v3; v4 shares the SGX report body).

Only offsets live here; verification is dcap-qvl's job (``sgxcloud.cas``).
Source: Intel SGX ECDSA Quote Library Reference (DCAP), "Quote Format".
"""

HEADER_SIZE = 48
VERSION_OFFSET = 0  # u16
ATTESTATION_KEY_TYPE_OFFSET = 2  # u16
TEE_TYPE_OFFSET = 4  # u32: 0 = SGX, 0x81 = TDX
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081

REPORT_BODY_OFFSET = 48
REPORT_BODY_SIZE = 384
CPUSVN_OFFSET = 48
ATTRIBUTES_OFFSET = 96  # 16 bytes; debug flag is bit 1 of the first byte
MRENCLAVE_OFFSET = 112  # 32 bytes
MRSIGNER_OFFSET = 176  # 32 bytes
ISVPRODID_OFFSET = 304  # u16
ISVSVN_OFFSET = 306  # u16
REPORT_DATA_OFFSET = 368  # 64 bytes
REPORT_DATA_SIZE = 64
SIGNATURE_DATA_LENGTH_OFFSET = 432  # u32
SIGNATURE_DATA_OFFSET = 436
