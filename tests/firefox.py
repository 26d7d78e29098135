"""Headless Firefox (Debian's firefox-esr) driven over its built-in Marionette protocol: no geckodriver, no download.

Marionette speaks length-prefixed JSON on a TCP port: `<len>:[0, id, "Command", {params}]` out, `<len>:[1, id,
error, result]` back. Scripts run privileged (the page's Content-Security-Policy does not apply to them)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

FIREFOX = shutil.which("firefox-esr")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the WebDriver element reference key


class MarionetteError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox with a fresh profile; `prefs` go into its user.js."""

    def __init__(self, profile: Path, prefs: dict, log_path: Path):
        if FIREFOX is None:
            raise RuntimeError("firefox-esr is not installed: run ./dev test, which installs it")
        profile.mkdir(parents=True, exist_ok=True)
        prefs = {"marionette.port": 0, **prefs}  # any free port; Firefox writes it to MarionetteActivePort
        (profile / "user.js").write_text("".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in prefs.items()))
        self.log_path, self.buf, self.msg_id, self.sock = log_path, b"", 0, None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(profile), "MOZ_CRASHREPORTER_DISABLE": "1"}
        if "MOZ_LOG" in os.environ:
            env["MOZ_LOG"] = os.environ["MOZ_LOG"]
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile), "about:blank"],
            stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            self.sock = self._connect(profile / "MarionetteActivePort")
            hello = self._read()
            assert hello.get("marionetteProtocol") == 3, hello
            self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
        except BaseException:
            self.close()
            raise

    def _connect(self, port_file: Path, timeout: float = 60) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"firefox exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                return socket.create_connection(("127.0.0.1", int(port_file.read_text())), timeout=60)
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Marionette did not start:\n{self.log_path.read_text()[-3000:]}")
                time.sleep(0.2)

    def _read(self):
        while b":" not in self.buf:
            self._recv()
        length, _, rest = self.buf.partition(b":")
        self.buf = rest
        while len(self.buf) < int(length):
            self._recv()
        body, self.buf = self.buf[:int(length)], self.buf[int(length):]
        return json.loads(body)

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MarionetteError("Marionette closed the connection")
        self.buf += chunk

    def command(self, name: str, params: dict | None = None):
        self.msg_id += 1
        data = json.dumps([0, self.msg_id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            kind, msg_id, error, result = self._read()
            if kind == 1 and msg_id == self.msg_id:
                break
        if error:
            raise MarionetteError(f"{name}: {error.get('error')}: {error.get('message')}")
        return result.get("value") if isinstance(result, dict) and set(result) == {"value"} else result

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def js(self, body: str, *args):
        """Run `body` (a function body: `return ...`) in the page; window.softphone etc. are the page's own."""
        return self.command("WebDriver:ExecuteScript", {"script": body, "args": list(args)})

    def find(self, css: str) -> dict:
        return self.command("WebDriver:FindElement", {"using": "css selector", "value": css})

    def click(self, css: str) -> None:
        self.command("WebDriver:ElementClick", {"id": self.find(css)[ELEMENT]})

    def type(self, css: str, text: str) -> None:
        self.command("WebDriver:ElementSendKeys", {"id": self.find(css)[ELEMENT], "text": text})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.command("WebDriver:TakeScreenshot", {"full": True})))

    def close(self) -> None:
        """Kill Firefox and its content processes (its own process group)."""
        try:
            self.sock.close()
        except (AttributeError, OSError):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
