"""A two-host libvirt lab on one machine, for the libvirt backend's tests and demo.

Each lab host is a libvirtd with its own virtlogd, started directly (no systemd) in its
own mount namespace, where DIR/hostN's directories are bind-mounted over libvirt's
fixed paths (/etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/log/libvirt,
/var/cache/libvirt): own configuration, state, sockets and host UUID, and nothing of a
libvirtd the machine may already run is touched. Host 1 answers on its UNIX socket
(COMMAND runs in its namespace, so `qemu:///system` reaches it); host 2 listens on
loopback TCP. DIR/pool is the same directory for both: the shared storage.
"""
