"""looptrace in code: install it, run the program, read the report."""

import asyncio
import time

import looptrace


def load_settings() -> dict[str, str]:
    time.sleep(0.2)  # a synchronous call, hidden in a helper
    return {"mode": "demo"}


async def handle(request: int) -> None:
    await asyncio.sleep(0.05)
    if request == 2:
        load_settings()


async def main() -> None:
    await asyncio.gather(*(handle(request) for request in range(4)))


looptrace.install(threshold_ms=50)
asyncio.run(main())
session = looptrace.uninstall()  # the final report: a looptrace.Session

for hotspot in session.hotspots:
    site = hotspot.site
    print(f"{hotspot.kind}: {hotspot.call} at line {site.line} in {site.function}, "
          f"{hotspot.count}x, longest {hotspot.max_ms:.0f} ms, task {hotspot.task}")
    mine = [f"{frame.function}:{frame.line}" for frame in hotspot.stack if frame.file == __file__]
    print("  stack (this file, innermost first): " + " <- ".join(reversed(mine)))
loop = session.loops[0]
print(f"loop: busy {loop.busy_ms:.0f} ms, waiting {loop.io_wait_ms:.0f} ms, "
      f"{loop.blocks} block(s)")
session.save("report.json")  # render it again with: looptrace report report.json
