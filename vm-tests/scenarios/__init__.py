"""Every scenario, in the order `vm-tests/run` runs them: the smoke scenarios first (they need
nothing but the images and the binary), then the ones that prove `pgaas install`."""

ALL = ["smoke-nspawn", "smoke-qemu", "install", "acme", "ha", "network"]
