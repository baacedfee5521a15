"""Where libvirtd keeps its pool definitions and status files (import-libvirt's
defaults; a module of its own so the command line names them without loading lxml)."""

DEFAULT_CONFIG_DIR = "/etc/libvirt/storage"
DEFAULT_RUN_DIR = "/run/libvirt/storage"
