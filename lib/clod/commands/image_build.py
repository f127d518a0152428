"""image-build: build clod's VM images (Make calls this; so can you).

Usage:
  image-build base [options]
  image-build dst [options]
  image-build check-stamps [options]
  image-build (-h | --help)

  base          build the base image (OS, tools, Claude Code): slow
  dst           build the destination image from base (your home): fast
  check-stamps  drop build stamps whose VM no longer exists (Make runs this)

Each build goes into a temporary VM, put in place only when it succeeded; the
previous image survives failures and Ctrl-C, and only VMs this build created
are removed. Settings come from the environment (make help lists them).

Options:
  -q --quiet     only errors on stderr
  -v --verbose   show the guest's output
  --debug        log every command run, and tracebacks
  -h --help      show this help
"""

from clod import cli, images, launch, log


def run(args):
    driver = launch.driver()
    if args["check-stamps"]:
        for kind in images.check_stamps(driver):
            log.info(f"the {kind} image is gone; it will be rebuilt")
    elif args["base"]:
        images.build_base(driver)
    else:
        images.build_dst(driver)


def main():
    cli.main(__doc__, run, "image-build")
