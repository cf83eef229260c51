"""The local backend's QEMU: a guest is one detached QEMU process.

- cmdline: the command line (machine, disks at their addresses, console, agent port)
- process: launch, wait until ready, shut down; the run directory's files
- control: the QMP and guest-agent clients
- accel: whether KVM really works here, or TCG
"""
