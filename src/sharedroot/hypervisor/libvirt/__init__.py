"""The libvirt backend (in progress): guests as libvirt domains on one or more hosts.

So far its pure parts: the domain XML that sharedroot's own state renders to (domain);
which host URIs a site may name is a rule of the model (sharedroot.model.hosturi), as
site.toml is checked with it. The backend itself, which defines and starts
the domains through the libvirt binding, is not registered yet.
"""
