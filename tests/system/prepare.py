"""Makes what the system tests boot, once for all of them (CTest's fixture "system"): cpack's
.deb of $DPENGINE_BUILD_DIR in $DPENGINE_BUILD_DIR/system-image/deb/, and the image of
build-image (cached). Writes their paths to the file named by $DPENGINE_SYSTEM_PREPARED, which
the tests read. Skips (exit 77) where the tests would."""

from __future__ import annotations

import json
import os
import sys

import systest


def main() -> int:
    if os.geteuid() != 0 or systest.missing_tool():
        print(f"SKIP: needs root and {', '.join(systest.TOOLS)}", flush=True)
        return systest.SKIP
    target = os.environ.get("DPENGINE_SYSTEM_PREPARED") or os.path.join(systest.BUILD, "system-image", "prepared.json")
    if os.path.exists(target):
        os.unlink(target)
    try:
        deb, image = systest.make_package_and_image()
    except systest.StepFailed as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    for what, seconds in systest.timings:
        print(f"time: {what}: {seconds:.0f} s", flush=True)
    with open(target, "w") as f:
        json.dump({"deb": deb, "image": image}, f)
    print(f"prepared: {deb}, {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
