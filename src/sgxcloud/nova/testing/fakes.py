"""What fake SGX hosts report: libvirt ``<sgx>`` domain-capability fragments."""

from __future__ import annotations


def sgx_features_xml(
    sections_mb: dict[int, int] | None,
    *,
    flc: bool = True,
    sgx2: bool = False,
    supported: bool = True,
) -> str:
    """A ``<features>`` element with ``<sgx>`` as libvirt >= 8.10 writes it.

    ``sections_mb`` maps host NUMA node -> EPC MiB; ``supported=False`` gives
    ``<sgx supported='no'/>``, what libvirt says on a host without SGX.
    """
    if not supported:
        return "  <features>\n    <gic supported='no'/>\n    <sgx supported='no'/>\n  </features>"
    sections_mb = sections_mb or {}
    yes_no = {True: "yes", False: "no"}
    sections = "\n".join(
        f"        <section node='{node}' size='{size * 1024}' unit='KiB'/>"
        for node, size in sorted(sections_mb.items())
    )
    return f"""  <features>
    <gic supported='no'/>
    <sgx supported='yes'>
      <flc>{yes_no[flc]}</flc>
      <sgx1>yes</sgx1>
      <sgx2>{yes_no[sgx2]}</sgx2>
      <section_size unit='KiB'>{sum(sections_mb.values()) * 1024}</section_size>
      <sections>
{sections}
      </sections>
    </sgx>
  </features>"""
