"""provisiond: keep an ISP's network in step with its billing system.

Billing groups become MikroTik firewall address-list entries, FreeRADIUS group
memberships and reply rows, and addresses from per-group pools. See DESIGN in the
README for the data flow of one pass.
"""

__version__ = "0.1.0"
