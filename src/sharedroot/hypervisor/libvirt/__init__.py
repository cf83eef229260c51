"""The libvirt backend: guests as libvirt domains on one or more hosts, one controller.

`backend` (the Hypervisor), `domain` (the XML rendered from sharedroot's own state),
`hosts` (every host asked as one fleet), `agent` (the guest agent through libvirt),
`probe` (KVM per host), `doctor`. Which host URIs a site may name is a rule of the model
(sharedroot.model.hosturi), as site.toml is checked with it.
"""
