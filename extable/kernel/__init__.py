"""Linux kernel exception tables (``__ex_table``) in modules and vmlinux, x86-64 and arm64.

:func:`reader.read` opens a module (ET_REL, also .ko.xz/.ko.zst/.ko.gz) or a
linked image and returns its entries as arrays; :mod:`.verify` checks them;
:mod:`.cli` is what ``extable dump|verify|lookup`` runs on such files
(:func:`detect.is_kernel_object` decides). The type numbering per kernel
version is data, in :mod:`.types`.
"""
