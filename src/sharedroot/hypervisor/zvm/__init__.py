"""The z/VM backend: sharedroot on the Linux worker guest (the paper's LNXCLONE).

It drives z/VM the way the open-source z/VM tools (Feilong's zthin, xCAT) do:

- `cp`: CP commands through `vmcp` (QUERY, LINK, DETACH, FLASHCOPY, XAUTOLOG, ...);
- `directory`: the user directory, through SMAPI's `smcli` or by hand (`manual`);
- `sync`: state.db as a cache of the directory entries;
- `worker`, `aliases`: the worker's own LINKs of guests' minidisks, always DETACHed;
- `devices`: the worker's side of a LINKed minidisk (s390-tools: chccwdev, dasdfmt, ...);
- `cms`: CMS files (the parm files on CMSCLONE 0192);
- `guestlink`: LOGOFF by CP, commands over SSH;
- `doctor`: what the worker needs;
- `backend`: `ZvmBackend`, the `Hypervisor` of a site whose backend is "zvm".
"""
