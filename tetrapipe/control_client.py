"""``tetrapipe tracingpolicy add|delete|enable|disable|list``: talks to a running collector over its control socket
(JSON lines, see collector/policy/control.py). Prints what the collector answered."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from tetrapipe.config import Config


class ControlError(RuntimeError):
    pass


def request(path: str, req: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as exc:
        raise ControlError(f"cannot reach the collector's control socket {path}: {exc}") from exc
    try:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ControlError("the collector closed the control socket without answering")
    return json.loads(buf)


def main(cfg: Config, args: argparse.Namespace) -> int:
    try:
        if args.action == "add":
            if not args.target:
                print("tetrapipe tracingpolicy add: name the policy file", file=sys.stderr)
                return 2
            path = Path(args.target)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                print(f"tetrapipe tracingpolicy add: {exc}", file=sys.stderr)
                return 1
            reply = request(cfg.control_socket, {"op": "add", "yaml": text, "source": str(path.resolve()),
                                                 "mode": args.mode})
            if not reply.get("ok"):
                print(f"policy not loaded: {reply.get('error')}", file=sys.stderr)
                return 1
            for p in reply.get("loaded", []):
                what = [f"{h['function_name']} via {h['serve']}" for h in p.get("hooks", [])]
                if p.get("loader"):
                    what.append("process_loader events (spec.loader)")
                print(f"loaded {p['name']} ({p['mode']} mode): " + ", ".join(what))
                for n in p.get("notices", []):
                    print(f"  notice: {n}")
            return 0
        if args.action in ("delete", "enable", "disable"):
            if not args.target:
                print(f"tetrapipe tracingpolicy {args.action}: name the policy", file=sys.stderr)
                return 2
            reply = request(cfg.control_socket, {"op": args.action, "name": args.target})
            if not reply.get("ok"):
                print(f"policy not {args.action}d: {reply.get('error')}", file=sys.stderr)
                return 1
            print(f"{args.action}d {args.target}")
            return 0
        reply = request(cfg.control_socket, {"op": "list"})
        print(f"{'NAME':<32} {'STATE':<11} {'MODE':<8} {'HOOKS':<5} {'MECHANISM':<24} SOURCE")
        for p in reply.get("policies", []):
            mechs = ",".join(dict.fromkeys(h.get("mechanism") or "?" for h in p.get("hooks", []))) or "-"
            print(f"{p.get('name') or '-':<32} {p.get('state', ''):<11} {p.get('mode', '-'):<8} "
                  f"{len(p.get('hooks', [])):<5} {mechs:<24} {p.get('source', '')}"
                  + (f"\n  error: {p['error']}" if p.get("error") else "")
                  + (f"\n  scoped to pods: acts in {p['pod_cgroups']} container cgroups"
                     if "pod_cgroups" in p else ""))
        return 0
    except ControlError as exc:
        print(f"tetrapipe tracingpolicy: {exc}", file=sys.stderr)
        return 1
