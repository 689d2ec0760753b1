"""The part of the hypervisor that runs on behalf of a vCPU, in the guest process.

As Xen runs in the context of the vCPU that trapped, pvxen runs a PV
guest's vCPUs inside that guest's own process (../ARCHITECTURE.md, "Where
vCPU code runs"): :mod:`.memory` maps the domain's memory file,
:mod:`.cpu` is one Unicorn engine per vCPU run in bounded slices,
:mod:`.hypercalls` serves the hypercalls a vCPU can serve locally and
forwards the global ones to hypervisord over the domain's connection, and
:mod:`.loop` is the vCPU's life. Imports: ``hypervisord.public`` and
``libxen`` only (the guest process must not load the daemon).
"""
