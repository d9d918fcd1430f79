"""Every command's entry point, thin: flags in, one library call, output. Each runs under the
one harness in core/cli.py. May import anything; nothing imports it."""
