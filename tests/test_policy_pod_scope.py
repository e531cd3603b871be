"""Policies scoped to pods, in the kernel: ``TracingPolicyNamespaced`` with a ``podSelector`` and a
cluster-wide policy with a ``containerSelector`` Sigkill a write to a test file only in the
processes of the selected containers.

Real parts: cgroup v2 directories named as kubelet + containerd name them
(``kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``, below a per-test
``tetrapipe-test-*.slice``), processes moved into them through ``cgroup.procs``, pods served by
the fake Kubernetes API (tests/fake_kube_api.py) and watched with the real pod watch, the
collector's PolicyManager + PodScope loading real bcc programs in this process. The pipeline test
runs the real collector, enricher and JSON exporter and checks the kill event carries its pod.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from fake_kube_api import FakeKubeAPI, make_pod
from harness import LoopThread, Pipeline, wait_until

from collector import connect_deny, loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from collector.policy.pod_scope import POLICYFILTER_CGROUPS, PodScope, container_cgroups, image_repo
from tetrapipe.k8s.pods import PodIndex

DASH = "/usr/bin/dash"
NODE = f"node-{uuid.uuid4().hex[:8]}"


def _hex(n: int) -> str:
    return uuid.uuid4().hex * (n // 32)


@dataclass
class Ctr:
    """A fake container: its pod on the fake API and its cgroup v2 directory."""

    name: str
    namespace: str
    labels: dict[str, str]
    container: str = "app"
    uid: str = ""
    cid: str = ""
    cgroup: Path = Path()

    node: str = NODE

    def pod(self) -> dict:
        return make_pod(self.name, self.uid, self.node, self.cid, namespace=self.namespace,
                        container=self.container, labels=self.labels)


def write_in(cgroup: Path | None, path: Path) -> int:
    """Return code of a shell that moves itself into ``cgroup`` (None: stays on the host) and then
    execs a shell that appends to ``path`` (exec'd in the container, as a container's processes
    are): -9 when a policy killed it."""
    move = f"echo $$ > {cgroup / 'cgroup.procs'} && " if cgroup else ""
    r = subprocess.run([DASH, "-c", f"{move}exec {DASH} -c 'echo hello >> {path}'"], capture_output=True,
                       timeout=30)
    return r.returncode


def policy_text(name: str, target: Path, scope: str, kind: str = "TracingPolicy", namespace: str = "") -> str:
    """A policy that Sigkills a write to ``target``; ``scope``: YAML lines under spec (selectors)."""
    ns = f"  namespace: {namespace}\n" if namespace else ""
    return (f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n{ns}spec:\n"
            + textwrap.indent(textwrap.dedent(scope), "  ") + textwrap.indent(textwrap.dedent(f"""\
              kprobes:
              - call: sys_write
                syscall: true
                args:
                - index: 0
                  type: fd
                selectors:
                - matchArgs:
                  - index: 0
                    operator: Equal
                    values: ["{target}"]
                  matchActions:
                  - action: Sigkill
            """), "  "))


def Watch(index: PodIndex, kubeconfig: Path) -> LoopThread:  # noqa: N802 - reads as the class it was
    """The real pod watch (tetrapipe/k8s/watch.py) on its own event loop thread."""
    from tetrapipe.k8s.watch import PodWatcher

    return LoopThread(PodWatcher(index, NODE, str(kubeconfig), backoff_max_s=1.0))


@pytest.fixture(scope="module")
def cgroot() -> Iterator[Path]:
    root = connect_deny.cgroup2_root()
    if root is None:
        skip_or_fail("no cgroup v2 hierarchy mounted")
    base = root / f"tetrapipe-test-{uuid.uuid4().hex[:8]}.slice"
    base.mkdir()
    try:
        yield base
    finally:
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        base.rmdir()


def make_ctr(base: Path, c: Ctr) -> Ctr:
    c.uid = str(uuid.uuid4())
    c.cid = _hex(64)
    pod_dir = base / f"kubepods-besteffort-pod{c.uid.replace('-', '_')}.slice"
    pod_dir.mkdir(exist_ok=True)
    c.cgroup = pod_dir / f"cri-containerd-{c.cid}.scope"
    c.cgroup.mkdir()
    return c


@pytest.fixture(scope="module")
def scoped(cgroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("podsel")
    files = Path(f"/tmp/tp-podsel-{uuid.uuid4().hex[:8]}")
    files.mkdir()
    os.chmod(files, 0o777)
    ctrs = {
        "web": make_ctr(cgroot, Ctr("web-1", "shop", {"app": "web"})),
        "web_other_ns": make_ctr(cgroot, Ctr("web-2", "other", {"app": "web"})),
        "db": make_ctr(cgroot, Ctr("db-1", "shop", {"app": "db"})),
        "sidecar": make_ctr(cgroot, Ctr("proxy-1", "other", {"app": "proxy"}, container="sidecar")),
    }
    api = FakeKubeAPI(NODE).start()
    for c in ctrs.values():
        api.put_pod(c.pod())
    index = PodIndex()
    watch = Watch(index, api.write_kubeconfig(tmp / "kubeconfig")).start()
    loader.prepare()
    scope = PodScope(index, cgroup_root=cgroot.parent, rescan_s=0.2)
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        pod_scope=scope)
    try:
        wait_until(lambda: len(index) == len(ctrs), what="pods listed from the fake API")
        mgr.load_text(policy_text("pods-web", files / "pod.txt", """\
            podSelector:
              matchLabels:
                app: web
              matchExpressions:
              - {key: tier, operator: DoesNotExist}
            """, "TracingPolicyNamespaced", "shop"), "pods-web.yaml")
        mgr.load_text(policy_text("ctr-sidecar", files / "ctr.txt", """\
            containerSelector:
              matchExpressions:
              - {key: name, operator: In, values: [sidecar]}
            """), "ctr-sidecar.yaml")
        yield {"mgr": mgr, "api": api, "ctrs": ctrs, "files": files, "base": cgroot, "scope": scope}
    finally:
        mgr.stop()
        watch.stop()
        api.stop()
        shutil.rmtree(files, ignore_errors=True)


def tick_until(mgr: PolicyManager, pred, what: str) -> None:  # noqa: ANN001
    def check() -> bool:
        mgr.tick()
        return bool(pred())
    wait_until(check, timeout=20, what=what)


def test_cgroup_id_is_the_directory_inode(cgroot: Path) -> None:
    """bpf_get_current_cgroup_id() == st_ino of the cgroup v2 directory (what the map is keyed by)."""
    c = make_ctr(cgroot, Ctr("x", "x", {}))
    text = ("BPF_HASH(seen, u32, u64, 64);\nTRACEPOINT_PROBE(syscalls, sys_enter_getppid)\n{\n"
            "    u32 tg = bpf_get_current_pid_tgid() >> 32;\n    u64 cg = bpf_get_current_cgroup_id();\n"
            "    seen.update(&tg, &cg);\n    return 0;\n}\n")
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    bpf = loader.load_program("cgroup-id probe", text=text)
    try:
        py = ("import os,sys; open(sys.argv[1] + '/cgroup.procs','w').write(str(os.getpid())); "
              "os.getppid(); print(os.getpid())")
        out = subprocess.run(["python3", "-c", py, str(c.cgroup)], capture_output=True, text=True, timeout=30)
        pid = int(out.stdout)
        assert bpf["seen"][ctypes.c_uint32(pid)].value == os.stat(c.cgroup).st_ino
    finally:
        bpf.cleanup()
    found = {cc.cgroup_id: cc.ref for cc in container_cgroups(cgroot.parent)}
    assert found[os.stat(c.cgroup).st_ino].container_id == c.cid
    assert found[os.stat(c.cgroup).st_ino].pod_uid == c.uid


def test_walk_finds_cgroupfs_driver_and_nested_cgroups(cgroot: Path) -> None:
    """kubelet's cgroupfs driver layout, CRI-O names and a container's own sub-cgroup are found;
    a pod's own directory (no container in it) is not."""
    uid, cid, crio = str(uuid.uuid4()), _hex(64), _hex(64)
    pod_dir = cgroot / "kubepods" / "besteffort" / f"pod{uid}"
    ctr = pod_dir / cid
    nested = ctr / "init.scope"
    crio_dir = cgroot / f"crio-{crio}.scope"
    for d in (nested, crio_dir):
        d.mkdir(parents=True)
    found = {cc.cgroup_id: cc.ref for cc in container_cgroups(cgroot)}
    assert found[os.stat(ctr).st_ino].container_id == cid and found[os.stat(ctr).st_ino].pod_uid == uid
    assert found[os.stat(nested).st_ino].container_id == cid          # counted as the container's
    assert found[os.stat(crio_dir).st_ino].runtime == "cri-o"
    assert os.stat(pod_dir).st_ino not in found


def test_pod_selector_kills_only_in_the_selected_pod(scoped: dict) -> None:
    ctrs, target = scoped["ctrs"], scoped["files"] / "pod.txt"
    assert POLICYFILTER_CGROUPS.labels(policy="pods-web")._value.get() == 1
    listed = {p["name"]: p for p in scoped["mgr"].list()}
    assert listed["pods-web"]["pod_cgroups"] == 1 and listed["ctr-sidecar"]["pod_cgroups"] == 1
    assert write_in(ctrs["web"].cgroup, target) == -9                  # ns shop, app=web
    assert write_in(ctrs["web_other_ns"].cgroup, target) == 0           # app=web in another namespace
    assert write_in(ctrs["db"].cgroup, target) == 0                     # other labels
    assert write_in(None, target) == 0                                  # host process
    assert write_in(ctrs["sidecar"].cgroup, target) == 0
    assert target.read_text() == "hello\n" * 4
    # other files are untouched by the policy even in the selected pod
    assert write_in(ctrs["web"].cgroup, scoped["files"] / "free.txt") == 0


def test_container_selector_kills_only_in_the_named_container(scoped: dict) -> None:
    ctrs, target = scoped["ctrs"], scoped["files"] / "ctr.txt"
    assert write_in(ctrs["sidecar"].cgroup, target) == -9
    for other in ("web", "web_other_ns", "db"):
        assert write_in(ctrs[other].cgroup, target) == 0, other
    assert write_in(None, target) == 0


def test_pod_label_change_and_new_container_are_followed(scoped: dict) -> None:
    mgr, api, ctrs, target = scoped["mgr"], scoped["api"], scoped["ctrs"], scoped["files"] / "pod.txt"
    gauge = POLICYFILTER_CGROUPS.labels(policy="pods-web")._value
    db = ctrs["db"]
    db.labels = {"app": "web"}                         # the db pod relabelled: now selected
    api.put_pod(db.pod())
    tick_until(mgr, lambda: gauge.get() == 2, "relabelled pod selected")
    assert write_in(db.cgroup, target) == -9
    db.labels = {"app": "web", "tier": "backend"}     # DoesNotExist tier: out again
    api.put_pod(db.pod())
    tick_until(mgr, lambda: gauge.get() == 1, "pod with tier label dropped")
    assert write_in(db.cgroup, target) == 0
    # a container whose cgroup appears after its pod: the periodic rescan picks it up
    late = Ctr("web-3", "shop", {"app": "web"}, uid=str(uuid.uuid4()), cid=_hex(64))
    api.put_pod(late.pod())
    tick_until(mgr, lambda: late.uid in scoped["scope"].index.by_uid, "late pod watched")
    make_ctr_at(scoped["base"], late)
    tick_until(mgr, lambda: gauge.get() == 2, "late container cgroup found by the rescan")
    assert write_in(late.cgroup, target) == -9
    api.delete_pod(late.uid)                            # pod gone: out of the policy
    tick_until(mgr, lambda: gauge.get() == 1, "deleted pod dropped")
    assert write_in(late.cgroup, target) == 0


def test_new_container_joins_at_its_cgroup_mkdir(scoped: dict) -> None:
    """No tick and no periodic rescan: the cgroup:cgroup_mkdir wake-up alone adds the container."""
    api, scope, target = scoped["api"], scoped["scope"], scoped["files"] / "pod.txt"
    gauge = POLICYFILTER_CGROUPS.labels(policy="pods-web")._value
    before = gauge.get()
    saved, scope.rescan_s = scope.rescan_s, 3600.0
    try:
        scope.refresh(force=True)                  # the periodic rescan is not due for an hour
        fresh = Ctr("web-4", "shop", {"app": "web"}, uid=str(uuid.uuid4()), cid=_hex(64))
        api.put_pod(fresh.pod())
        wait_until(lambda: fresh.uid in scope.index.by_uid, what="pod watched")
        make_ctr_at(scoped["base"], fresh)         # the runtime makes the container's cgroup
        wait_until(lambda: gauge.get() == before + 1, timeout=2, interval=0.01,
                   what="map updated from the mkdir alone")
        assert write_in(fresh.cgroup, target) == -9
        api.delete_pod(fresh.uid)
    finally:
        scope.rescan_s = saved


def make_ctr_at(base: Path, c: Ctr) -> None:
    pod_dir = base / f"kubepods-besteffort-pod{c.uid.replace('-', '_')}.slice"
    pod_dir.mkdir(exist_ok=True)
    c.cgroup = pod_dir / f"cri-containerd-{c.cid}.scope"
    c.cgroup.mkdir()


def test_scoped_policy_refused_without_the_kubernetes_api() -> None:
    mgr = PolicyManager(RecordQueue(1000, asyncio.new_event_loop()), [0] * 10)
    text = policy_text("needs-k8s", Path("/tmp/x"), "podSelector:\n  matchLabels:\n    app: web\n")
    with pytest.raises(PolicyError) as ei:
        mgr.load_text(text, "needs-k8s.yaml")
    assert "needs the pods of this node: set enable_k8s_api" in str(ei.value)
    assert str(ei.value).startswith("needs-k8s.yaml:6: spec.podSelector: ")
    ns = policy_text("ns-only", Path("/tmp/x"), "", "TracingPolicyNamespaced", "shop")
    with pytest.raises(PolicyError, match="kind: a policy scoped to pods"):
        mgr.load_text(ns, "ns.yaml")
    assert mgr.loaded == {}


def test_image_repo() -> None:
    assert image_repo("docker.io/library/nginx:1.27") == "docker.io/library/nginx"
    assert image_repo("localhost:5000/app@sha256:abc") == "localhost:5000/app"
    assert image_repo("localhost:5000/app") == "localhost:5000/app"


def test_unscoped_programs_have_no_scope_check() -> None:
    """Only scoped policies carry the cgroup check (unscoped ones compile as before)."""
    if not Path("/sys/kernel/tracing/events/syscalls").is_dir():
        skip_or_fail("needs tracefs syscall formats")
    from collector.policy import parser
    (plain,) = parser.parse_text(policy_text("plain", Path("/tmp/x"), ""))
    (ns,) = parser.parse_text(policy_text("ns", Path("/tmp/x"), "", "TracingPolicyNamespaced", "shop"))
    assert "bpf_get_current_cgroup_id" not in compiler.compile_policy(plain, 1, [0] * 10).text
    text = compiler.compile_policy(ns, 1, [0] * 10).text
    body = text.split("tp_hook_0(void *ctx, u64 *a, s64 ret, u32 is_ret)\n{\n", 1)[1]
    assert body.startswith("    if (!tp_in_scope())\n        return 0;\n")


def test_events_carry_the_pod(broker, cgroot: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Real collector (enable_k8s_api) + enricher + JSON export: the kill event names its pod."""
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    c = make_ctr(cgroot, Ctr("web-e2e", "shop", {"app": "web"}))
    files = Path(f"/tmp/tp-podsel-e2e-{uuid.uuid4().hex[:8]}")
    files.mkdir()
    os.chmod(files, 0o777)
    target = files / "pod.txt"
    policy = tmp_path / "pods-web.yaml"
    policy.write_text(policy_text("pods-web-e2e", target, "podSelector:\n  matchLabels:\n    app: web\n",
                                  "TracingPolicyNamespaced", "shop"))
    os.chmod(policy, 0o644)
    p = Pipeline(broker.bootstrap, tmp_path)
    c.node = p.node_name
    api = FakeKubeAPI(p.node_name).start()
    api.put_pod(c.pod())
    p.settings.update(enable_k8s_api="true", k8s_kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                      tracing_policy=str(policy))
    try:
        p.start("enricher", "enricher")
        p.start("export-json", "export", "json")
        col = p.start("collector", "collector", wait=False).wait_ready(180)
        wait_until(lambda: col.metric("tetrapipe_policyfilter_cgroups", policy="pods-web-e2e") == 1,
                   timeout=30, what="collector selected the pod's cgroup")
        assert write_in(c.cgroup, target) == -9
        assert write_in(None, target) == 0

        def kill_event() -> dict | None:
            for line in p.export_text().splitlines():
                if '"process_kprobe"' in line and "pods-web-e2e" in line:
                    try:
                        return json.loads(line)["process_kprobe"]
                    except json.JSONDecodeError:
                        return None
            return None
        wait_until(kill_event, timeout=60, what="process_kprobe of the killed write")
        ev = kill_event()
        assert ev is not None
        assert ev["action"] == "KPROBE_ACTION_SIGKILL" and ev["policy_name"] == "pods-web-e2e"
        pod = ev["process"]["pod"]
        assert pod["namespace"] == "shop" and pod["name"] == "web-e2e" and pod["pod_labels"] == {"app": "web"}
        assert pod["container"]["name"] == "app" and ev["process"]["docker"] == c.cid[:31]
        events = [json.loads(x) for x in p.export_text().splitlines() if '"process_kprobe"' in x]
        assert all(e["process_kprobe"]["process"].get("pod", {}).get("name") == "web-e2e"
                   for e in events if "pods-web-e2e" in json.dumps(e))   # the host write made none
    finally:
        p.stop()
        api.stop()
        shutil.rmtree(files, ignore_errors=True)


CTR_TARGET_C = r"""
__attribute__((noinline)) int tp_pam_auth(int x)
{
    asm volatile("" ::: "memory");
    return x + 1;
}
int main(int argc, char **argv) { return tp_pam_auth(argc) == argc + 1 ? 0 : 3; }
"""
CTR_BIN = "/usr/lib/tp-ctr-target"


def run_in(cgroup: Path | None, binary: Path) -> int:
    """Return code of ``binary`` run inside ``cgroup`` (None: on the host): -9 when killed."""
    move = f"echo $$ > {cgroup / 'cgroup.procs'} && " if cgroup else ""
    return subprocess.run([DASH, "-c", f"{move}exec {binary}"], capture_output=True, timeout=30).returncode


def test_uprobe_path_resolved_in_each_selected_container(scoped: dict, tmp_path: Path) -> None:
    """resolvePathInContainer: the policy loads with no selected container running and waits; the
    uprobe is attached to the file in the container's own root (/proc/<pid>/root) when a process of
    the container appears, acts there only (the same path in another root is another file), and
    is detached when the pod goes."""
    mgr, api, scope, base = scoped["mgr"], scoped["api"], scoped["scope"], scoped["base"]
    roots = {}
    for name in ("a", "b"):      # two container roots, each with its own copy of the binary
        roots[name] = tmp_path / f"root-{name}"
        (roots[name] / "usr/lib").mkdir(parents=True)
    (tmp_path / "t.c").write_text(CTR_TARGET_C)
    subprocess.run(["gcc", "-O1", "-o", str(roots["a"] / CTR_BIN.lstrip("/")), str(tmp_path / "t.c")], check=True)
    shutil.copy(roots["a"] / CTR_BIN.lstrip("/"), roots["b"] / CTR_BIN.lstrip("/"))
    sshd = make_ctr(base, Ctr("sshd-1", "auth", {"app": "sshd"}))
    other = make_ctr(base, Ctr("other-1", "auth", {"app": "other"}))
    for c in (sshd, other):
        api.put_pod(c.pod())
    wait_until(lambda: sshd.uid in scope.index.by_uid and other.uid in scope.index.by_uid, what="pods watched")
    name = "uprobe-pod"
    mgr.load_text(textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: {name}
        spec:
          podSelector:
            matchLabels:
              app: sshd
          uprobes:
          - path: "{CTR_BIN}"
            symbols: [tp_pam_auth]
            resolvePathInContainer: true
            selectors:
            - matchActions:
              - action: Sigkill
        """), "uprobe-pod.yaml")
    sleepers = []
    try:
        listed = {p["name"]: p for p in mgr.list()}
        assert listed[name]["state"] == "enabled" and listed[name]["container_uprobes"] == 0  # waits
        assert "in each selected container's root" in json.dumps(listed[name])
        for c, root in ((sshd, roots["a"]), (other, roots["b"])):   # each container's first process
            py = (f"import os,time; open('{c.cgroup}/cgroup.procs','w').write(str(os.getpid())); "
                  f"os.chroot('{root}'); print('in', flush=True); time.sleep(600)")
            s = subprocess.Popen(["python3", "-c", py], stdout=subprocess.PIPE, text=True)
            sleepers.append(s)
            assert s.stdout.readline() == "in\n"
        bpf = mgr.loaded[name].bpf
        tick_until(mgr, lambda: {p["name"]: p for p in mgr.list()}[name]["container_uprobes"] == 1,
                   "uprobe attached in the sshd container")
        assert bpf.num_open_uprobes() == 1
        a_bin, b_bin = roots["a"] / CTR_BIN.lstrip("/"), roots["b"] / CTR_BIN.lstrip("/")
        assert run_in(sshd.cgroup, a_bin) == -9          # the file in the sshd container's root
        assert run_in(sshd.cgroup, b_bin) == 0           # same path in another root: another file
        assert run_in(other.cgroup, a_bin) == 0          # not a selected pod
        assert run_in(None, a_bin) == 0                  # host process
        api.delete_pod(sshd.uid)                         # the pod goes: detached
        tick_until(mgr, lambda: {p["name"]: p for p in mgr.list()}[name]["container_uprobes"] == 0,
                   "uprobe detached when the pod went")
        assert bpf.num_open_uprobes() == 0
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
        api.delete_pod(other.uid)
        mgr.delete(name)


def test_uprobe_path_rules_at_load(tmp_path: Path) -> None:
    """resolvePathInContainer needs a pod/container selection; Tetragon's /procRoot/... is read as
    /proc/... where /procRoot does not exist, and the load answer says so."""
    from collector.policy import parser
    text = textwrap.dedent("""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: x
        spec:
          uprobes:
          - path: "/usr/bin/bash"
            symbols: [_start]
            resolvePathInContainer: true
        """)
    with pytest.raises(PolicyError, match=r"x.yaml:9: spec.uprobes\[0\].resolvePathInContainer: "
                                          "resolvePathInContainer needs a podSelector"):
        parser.parse_text(text, "x.yaml")
    if Path("/procRoot").exists():
        pytest.skip("/procRoot exists on this machine")   # not on CI's machine: the mapping is what is tested
    # /procRoot/self (this machine's sandbox may deny /proc/1/root; the 6.12 guest counts the
    # library's /procRoot/1/root/usr/bin/bash)
    (p,) = parser.parse_text(text.replace("/usr/bin/bash", "/procRoot/self/root/usr/bin/bash")
                             .replace("    resolvePathInContainer: true\n", ""))
    comp = compiler.compile_policy(p, 1, [0] * 10)
    assert comp.hooks[0].uprobe.path == "/proc/self/root/usr/bin/bash"
    assert any("/procRoot/self/root/usr/bin/bash read as /proc/self/root/usr/bin/bash" in n for n in comp.notices)
