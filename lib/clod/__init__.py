"""clod: run coding agents with their safety prompts off, inside a VM.

The package is shared by every script in bin/. Modules are small and import only
what they use, so a script that lists projects never pays for the VM drivers.
"""
