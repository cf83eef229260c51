"""The libvirt backend (in progress): guests as libvirt domains on one or more hosts.

So far its pure parts: which host URIs a site may name (uri) and the domain XML that
sharedroot's own state renders to (domain). The backend itself, which defines and starts
the domains through the libvirt binding, is not registered yet.
"""
