"""Screenshots of the docs site, to see that it renders: the home page and the MixPE
block page as PNGs in build/docs-screenshots/, taken by headless Chromium from the
built site (build/site, `make docs`) served on localhost.

    python -m quattro_cli.screenshots            # builds the site first if it is missing
    python -m quattro_cli.screenshots --rebuild  # always rebuilds it

Needs a checkout (mkdocs.yml) and Chromium (Debian: `apt-get install chromium`).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "site"
OUT = ROOT / "build" / "docs-screenshots"
#: (PNG name, path on the site) of each screenshot.
PAGES = (("home.png", "/"), ("mixpe.png", "/mixpe/"))
WINDOW = (1400, 1000)
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH ($CHROMIUM first), or None."""
    for name in (os.environ.get("CHROMIUM"), *_BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def build_site() -> None:
    """`mkdocs build --strict` into build/site, as `make docs` does."""
    if not (ROOT / "mkdocs.yml").is_file():
        raise SystemExit(f"no mkdocs.yml in {ROOT}: the screenshots need a checkout")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=ROOT, env=env)
    if r.returncode:
        raise SystemExit(f"mkdocs build failed (exit {r.returncode}); `make docs` installs "
                         f"MkDocs and shows the error")


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve `directory` on a free localhost port from a daemon thread; returns the
    server (call shutdown() when done) and its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base name)
        pass


def screenshot(browser: str, url: str, png: Path, profile: Path) -> None:
    """One PNG of `url` at WINDOW size by headless `browser`, with a throwaway profile
    and no network use besides the page."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={png}", url]
    png.unlink(missing_ok=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode or not png.is_file() or png.stat().st_size == 0:
        raise SystemExit(f"{Path(browser).name} wrote no screenshot of {url} "
                         f"(exit {r.returncode}):\n{r.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    """Build the site if needed (always with --rebuild), then screenshot PAGES into OUT."""
    ap = argparse.ArgumentParser(prog="python -m quattro_cli.screenshots",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--rebuild", action="store_true", help="rebuild the site even if built")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no Chromium found (looked for $CHROMIUM, " + ", ".join(_BROWSERS) + "); "
              "install it, e.g. `apt-get install chromium` on Debian, or set CHROMIUM "
              "to its path", file=sys.stderr)
        return 2
    if args.rebuild or not (SITE / "index.html").is_file():
        build_site()
    OUT.mkdir(parents=True, exist_ok=True)
    server, base = serve(SITE)
    try:
        with tempfile.TemporaryDirectory(prefix="quattro-chromium-") as profile:
            for name, page in PAGES:
                screenshot(browser, base + page, OUT / name, Path(profile))
                print(f"{OUT / name}  ({base + page})")
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
