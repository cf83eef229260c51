"""zvmsim: a CP emulator for testing sharedroot's `zvm` backend.

A test double, not z/VM and not part of sharedroot (it lives outside `src/sharedroot` on
purpose). It models the part of CP, the user directory, SMAPI's `smcli` and the s390-tools
device programs that the backend uses. See README.md beside this file.
"""

from __future__ import annotations

# The Linux worker guest every emulated Linux-side program runs as (the paper's LNXCLONE).
WORKER = "LNXCLONE"
# What `QUERY USERID` names as the system.
SYSTEM_NAME = "ZVMSIM1"
# 3390 geometry as the emulator uses it: 12 blocks of 4096 bytes per track, 15 tracks per
# cylinder, so 1 cylinder = 180 blocks = 737280 bytes.
BLOCK = 4096
TRACK_BYTES = 12 * BLOCK
CYL_BYTES = 15 * TRACK_BYTES
