"""ssh-run: run a command (or a shell) in one of clod's VMs over SSH.

Usage:
  ssh-run [options] [--project=<name>] [--subdir=<dir>] <vm> [--] [<cmd>...]
  ssh-run (-h | --help)

Connects with clod's own key and the VM's pinned host key (state/ssh/), never
with ~/.ssh. Each CMD argument reaches the guest intact (quoted once for the
guest's shell). Without CMD, a login shell. A terminal is allocated only when
stdin and stdout both are one. The exit status is the remote command's; 255
means ssh itself failed, and its error is printed.

Environment: CLOD_BOOT_TIMEOUT=<s> bounds the wait for the VM's address and
then for its SSH server (defaults 60 and 30 s).

Options:
  --project=<name>  start in ~/projects/NAME in the guest
  --subdir=<dir>    ... and in this subdirectory of it [default: ]
  -q --quiet        only errors on stderr
  -v --verbose      more detail on stderr
  --debug           log every command run, and tracebacks
  -h --help         show this help

Example:
  ssh-run clodpod-debian -- uname -a
  echo hi | ssh-run clodpod-debian -- cat
"""

from clod import cli, launch, ssh


def run(args):
    driver = launch.driver()
    name = args["<vm>"]
    endpoint = ssh.Endpoint(vm=name, **driver.ssh_endpoint(name, wait=launch.boot_timeout(launch.IP_WAIT)))
    ssh.wait_for_sshd(endpoint, timeout=launch.boot_timeout(30))
    shares = [share for share, _ in driver.running_dirs(name)]
    argv = args["<cmd>"] or ["zsh", "-l"]
    remote = ssh.remote_command(argv, driver.guest_os, args["--project"], args["--subdir"], shares)
    return ssh.session(endpoint, remote)


def main():
    cli.main(__doc__, run, "ssh-run")
