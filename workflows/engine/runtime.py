"""Where the local engine runs a node: a process of this Python environment, or the template's image.

The engine resolves a node into a `Pod` (command, args and env exactly as Argo substitutes them,
the container paths of its outputs, its security context and limits); a runtime executes it and
leaves the node's output files in `Pod.out_dir`. `ProcessRuntime` maps container paths to that
directory; `ContainerRuntime` runs the image with podman or docker as the kubelet would run the pod
and copies the outputs out of the container after it exits, as Argo's emissary does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from steps.errors import UserError
from steps.lifeline import Owner, die_with_parent
from workflows.engine.orphans import node_labels, node_marks
from workflows.engine.reaper import Reaper

_KILL_GRACE_S = 5
# Argo's emissary keeps its files (and the progress file) here in every pod.
ARGO_DIR = "/var/run/argo"
PROGRESS_FILE = f"{ARGO_DIR}/progress"
RUNTIMES = ("process", "podman", "docker", "container")


@dataclass
class Pod:
    """One attempt of a container or script template, resolved."""

    name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]  # the template's env entries, values substituted
    working_dir: str | None
    output_dirs: list[str]  # container directories holding output parameters and artifacts
    out_dir: Path  # host directory that receives them
    attempt_dir: Path  # host directory of this attempt (log, script, progress)
    log_path: Path
    timeout_s: float | None
    pod_security: dict[str, Any] = field(default_factory=dict)
    container_security: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    script: str | None = None  # a script template's source
    run: str = ""  # the workflow's name, and the engine that runs it: what names an orphan later
    owner: Owner | None = None

    @property
    def progress_path(self) -> Path:
        """Where the node's `ARGO_PROGRESS_FILE` lands on this machine."""
        return self.attempt_dir / "argo" / "progress"


@dataclass
class Exit:
    """How an attempt ended: an exit code, or why it was cut short (its deadline, or a refusal to start)."""

    code: int | None = None
    reason: str = ""  # "deadline" | "error"
    message: str = ""


class Runtime(Protocol):
    name: str
    honoured: frozenset[str]  # manifest keys (engine check paths) this runtime applies rather than ignores

    def execute(self, pod: Pod) -> Exit: ...

    def kill(self) -> None: ...


# --- Kubernetes values -----------------------------------------------------------------------------
_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ('500m', '2', '4Gi') as a number."""
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value).strip())
    if not match:
        raise UserError(f"cannot read resource quantity {value!r} (use e.g. 500m, 2, 512Mi, 4Gi)")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2) or "", 1.0)


def resource_field(ref: dict[str, Any], resources: dict[str, Any]) -> str:
    """The downward API's `resourceFieldRef`: ceil(quantity / divisor), node capacity when no limit is set."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    value = resources.get(kind, {}).get(name)
    if value is None and kind == "requests":
        value = resources.get("limits", {}).get(name)
    if value is None:  # no limit: the node's allocatable, i.e. this machine's
        value = (os.cpu_count() or 1) if name == "cpu" else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return str(math.ceil(quantity(value) / quantity(ref.get("divisor", "1"))))


def argo_env(pod: Pod, progress_file: str) -> dict[str, str]:
    """Variables the Argo executor sets in every main container."""
    return {"ARGO_POD_NAME": pod.name, "ARGO_CONTAINER_NAME": "main", "ARGO_PROGRESS_FILE": progress_file}


def pod_name(workflow: str, template: str, node_name: str) -> str:
    """Argo's v2 pod name: `<workflow>-<template>-<fnv32a(node name)>` (workflow/util/pod_name.go)."""
    if workflow == node_name:
        return workflow
    prefix = f"{workflow}-{template}"
    if len(prefix) > 253 - 11:
        prefix = prefix[: 253 - 11]
    digest = 0x811C9DC5
    for byte in node_name.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{prefix}-{digest}"


# --- the process runtime (the default) ------------------------------------------------------------
class ProcessRuntime:
    """Each node as a subprocess of this Python environment; container output paths map to the node dir."""

    name = "process"
    honoured: frozenset[str] = frozenset()

    def __init__(self, executable_dir: Path | None = None) -> None:
        self.executable_dir = executable_dir or Path(sys.executable).parent
        self._proc: subprocess.Popen[bytes] | None = None

    def execute(self, pod: Pod) -> Exit:
        mapped = [*sorted(pod.output_dirs, key=len, reverse=True)]

        def to_host(text: str) -> str:
            for root in mapped:
                if text == root or text.startswith(root + "/"):
                    return str(pod.out_dir) + text[len(root) :]
            return text

        command = [to_host(c) for c in pod.command]
        args = [to_host(a) for a in pod.args]
        if not command:
            return Exit(reason="error", message="the local engine needs an explicit command (it reads no image)")
        if pod.script is not None:
            script = pod.attempt_dir / "script"
            script.write_text(pod.script)
            args = [*args, str(script)]
        try:
            argv = [self._executable(command[0]), *command[1:], *args]
        except UserError as exc:
            return Exit(reason="error", message=str(exc))
        env = dict(os.environ)
        for item in pod.env:
            if "valueFrom" in item:
                if "resourceFieldRef" in item["valueFrom"]:
                    env[item["name"]] = resource_field(item["valueFrom"]["resourceFieldRef"], pod.resources)
                # Secrets live in the cluster; on this runtime the same variables come from this environment.
                continue
            value = to_host(str(item.get("value", "")))
            if value == "" and item["name"] in os.environ:
                continue  # an empty default does not hide a locally configured value
            env[item["name"]] = value
        pod.progress_path.parent.mkdir(parents=True, exist_ok=True)
        env.update(argo_env(pod, str(pod.progress_path)))
        if pod.owner is not None:
            env.update(node_marks(pod.run, pod.owner))
        with open(pod.log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=pod.working_dir or pod.attempt_dir,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),  # the engine's end is the node's end, even by SIGKILL
                )
            except OSError as exc:
                return Exit(reason="error", message=f"cannot start {argv[0]}: {exc.strerror}")
            self._proc = proc
            try:
                return Exit(code=proc.wait(timeout=pod.timeout_s))
            except subprocess.TimeoutExpired:
                self._terminate(proc)
                return Exit(reason="deadline")
            except KeyboardInterrupt:
                self._terminate(proc)
                raise
            finally:
                self._proc = None

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._terminate(proc)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a grace period (like a pod)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _executable(self, command: str) -> str:
        """The container's command, from this Python environment first (no image is involved)."""
        local = self.executable_dir / command
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
        if command in ("python", "python3"):
            return sys.executable
        found = shutil.which(command)
        if not found:
            raise UserError(f"command {command!r} not found in {self.executable_dir} or on PATH")
        return found


# --- the container runtime ----------------------------------------------------------------------
def find_container_engine(requested: str) -> str:
    """`podman`, `docker`, or for `container` whichever is installed (podman first)."""
    candidates = ("podman", "docker") if requested == "container" else (requested,)
    for candidate in candidates:
        if shutil.which(candidate):
            return candidate
    wanted = " or ".join(candidates)
    raise UserError(f"--runtime {requested}: {wanted} is not installed (or use --runtime process)")


class ContainerRuntime:
    """Each node in its template's image, as its pod would run: user, capabilities, limits, env, outputs."""

    honoured = frozenset(
        {
            "spec.securityContext",
            "template.securityContext",
            "container.securityContext",
            "container.resources",
            "container.imagePullPolicy",
        }
    )

    def __init__(
        self,
        engine: str,
        image: str | None = None,
        file_store: Path | None = None,
        secrets: dict[str, str] | None = None,
    ) -> None:
        self.engine = find_container_engine(engine)
        self.name = self.engine
        self.image_override = image
        self.file_store = file_store
        # The local stand-in for the cluster's Secrets: secret key name -> value. A key that is not set
        # is an error naming it, unless the store is a file store (which needs no credentials).
        self.secrets = secrets if secrets is not None else dict(os.environ)
        self._container: str | None = None
        self._client: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._image_users: dict[str, str] = {}
        self._shared_with: set[int] = set()
        self._reaper = Reaper(self.engine)

    # -- what the kubelet checks before it starts a container
    def _image_user(self, image: str) -> str:
        if image not in self._image_users:
            result = subprocess.run(
                [self.engine, "image", "inspect", "--format", "{{.Config.User}}", image],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise _Refused(
                    f"image {image} is not present in {self.engine}: build it with scripts/build-image.sh "
                    f"(or `{self.engine} pull` it; the local engine never pulls)"
                )
            self._image_users[image] = result.stdout.strip()
        return self._image_users[image]

    def _user(self, pod: Pod, image: str) -> tuple[int | None, int | None]:
        """The effective uid/gid, refused as the kubelet refuses a root container under runAsNonRoot."""
        effective = {**pod.pod_security, **pod.container_security}
        run_as_user = effective.get("runAsUser")
        run_as_group = effective.get("runAsGroup")
        if effective.get("runAsNonRoot"):
            # kubelet verifyRunAsNonRoot (pkg/kubelet/kuberuntime/security_context_others.go)
            if run_as_user is not None:
                if int(run_as_user) == 0:
                    raise _Refused(f"container's runAsUser breaks non-root policy (pod: {pod.name!r}, container: main)")
            else:
                user = self._image_user(image).partition(":")[0]
                if user == "" or user == "0":
                    raise _Refused(
                        f"container has runAsNonRoot and image will run as root (pod: {pod.name!r}, container: main)"
                        f": image {image} has no non-root USER; set runAsUser or build the step image"
                    )
                if not user.isdigit():
                    raise _Refused(
                        f"container has runAsNonRoot and image has non-numeric user ({user}), "
                        f"cannot verify user is non-root (pod: {pod.name!r}, container: main)"
                    )
        return (int(run_as_user) if run_as_user is not None else None, int(run_as_group) if run_as_group else None)

    def _environment(self, pod: Pod) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in pod.env:
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = str(item.get("value", ""))
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if ref["key"] in self.secrets:
                    env[item["name"]] = self.secrets[ref["key"]]
                elif not ref.get("optional") and self.file_store is None:
                    # With a file store the credentials are not needed: the variable stays unset.
                    raise _Refused(
                        f"env {item['name']}: secret {ref.get('name')!r} key {ref['key']!r} is set from the local "
                        f"environment variable {ref['key']}, which is not set: export it (the store's credentials)"
                    )
            elif "resourceFieldRef" in source:
                env[item["name"]] = resource_field(source["resourceFieldRef"], pod.resources)
            else:
                kinds = ", ".join(sorted(source))
                raise _Refused(f"env {item['name']}: valueFrom.{kinds} is not supported by --runtime {self.engine}")
        env.update(argo_env(pod, PROGRESS_FILE))
        return env

    def _create_args(self, pod: Pod, image: str) -> list[str]:
        uid, gid = self._user(pod, image)
        sc = pod.container_security
        args = [self.engine, "create", "--name", pod.name, "--hostname", pod.name[:63], "--network", "host"]
        if pod.owner is not None:
            args += [f"--label={key}={value}" for key, value in node_labels(pod.run, pod.owner).items()]
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        for group in [pod.pod_security.get("fsGroup"), *pod.pod_security.get("supplementalGroups", [])]:
            if group is not None:
                args += ["--group-add", str(group)]
        capabilities = sc.get("capabilities", {})
        args += [f"--cap-drop={c}" for c in capabilities.get("drop", [])]
        args += [f"--cap-add={c}" for c in capabilities.get("add", [])]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if sc.get("privileged"):
            args += ["--privileged"]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"] if self.engine == "podman" else ["--read-only"]
        limits = pod.resources.get("limits", {})
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):g}"]
        if "memory" in limits:
            args += ["--memory", str(int(quantity(limits["memory"])))]
        for name, value in self._environment(pod).items():
            args += ["--env", f"{name}={value}"]
        pod.progress_path.parent.mkdir(parents=True, exist_ok=True)
        pod.progress_path.parent.chmod(0o777)  # the pod's user must be able to write its progress
        args += ["--volume", f"{pod.progress_path.parent}:{ARGO_DIR}"]
        if self.file_store is not None:
            self.file_store.mkdir(parents=True, exist_ok=True)
            args += ["--volume", f"{self.file_store}:{self.file_store}"]
        if pod.working_dir:
            args += ["--workdir", pod.working_dir]
        command = list(pod.command)
        arguments = list(pod.args)
        if pod.script is not None:
            # Argo writes a script template's source to a file and appends its path to the command.
            script = pod.progress_path.parent / "script"
            script.write_text(pod.script)
            script.chmod(0o644)
            arguments = [*arguments, f"{ARGO_DIR}/script"]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        return [*args, image, *arguments]

    def _share_store(self, pod: Pod) -> None:
        """Give the pod's fsGroup the file store, as the kubelet does for a volume (fsGroupChangePolicy Always).

        Group ownership, group read/write, and setgid directories so that new files keep the group.
        """
        group = pod.pod_security.get("fsGroup")
        if self.file_store is None or group is None or int(group) in self._shared_with:
            return
        self.file_store.mkdir(parents=True, exist_ok=True)
        try:
            for path in [self.file_store, *self.file_store.rglob("*")]:
                if path.is_symlink():
                    continue
                os.chown(path, -1, int(group))
                mode = path.stat().st_mode
                path.chmod(mode | 0o060 | (0o2010 if path.is_dir() else 0))
        except PermissionError as exc:
            raise _Refused(
                f"the file store {self.file_store} cannot be shared with the pod's fsGroup {group} "
                f"({exc.strerror}: {exc.filename}): run as its owner, or use an s3:// store"
            ) from exc
        self._shared_with.add(int(group))

    def execute(self, pod: Pod) -> Exit:
        image = self.image_override or pod.image
        try:
            self._share_store(pod)
            create = self._create_args(pod, image)
        except _Refused as exc:
            return Exit(reason="error", message=str(exc))
        subprocess.run([self.engine, "rm", "--force", pod.name], capture_output=True)
        self._reaper.created(pod.name)  # before it exists: a crash from here on still removes it
        created = subprocess.run(create, capture_output=True, text=True)
        if created.returncode != 0:
            self._reaper.removed(pod.name)
            return Exit(reason="error", message=f"{self.engine} create: {_last_line(created.stderr)}")
        with self._lock:
            self._container = pod.name
        try:
            with open(pod.log_path, "wb") as log:
                client = subprocess.Popen(
                    [self.engine, "start", "--attach", pod.name],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
                self._client = client
                try:
                    client.wait(timeout=pod.timeout_s)
                except subprocess.TimeoutExpired:
                    self._stop(pod.name)
                    client.wait()
                    return Exit(reason="deadline")
                except KeyboardInterrupt:
                    self._stop(pod.name)
                    raise
            code = self._exit_code(pod.name)
            # As Argo's emissary: outputs are collected from the container's file system after it exits.
            pod.out_dir.mkdir(parents=True, exist_ok=True)
            for directory in pod.output_dirs:
                subprocess.run([self.engine, "cp", f"{pod.name}:{directory}/.", f"{pod.out_dir}/"], capture_output=True)
            return Exit(code=code)
        finally:
            with self._lock:
                self._container = None
                self._client = None
            subprocess.run([self.engine, "rm", "--force", pod.name], capture_output=True)
            self._reaper.removed(pod.name)

    def _exit_code(self, name: str) -> int:
        result = subprocess.run(
            [self.engine, "inspect", "--format", "{{.State.ExitCode}}", name], capture_output=True, text=True
        )
        try:
            return int(result.stdout.strip())
        except ValueError:
            return 1

    def _stop(self, name: str) -> None:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet stops a pod."""
        subprocess.run([self.engine, "stop", "--time", str(_KILL_GRACE_S), name], capture_output=True)

    def kill(self) -> None:
        with self._lock:
            name = self._container
        if name is not None:
            self._stop(name)


class _Refused(Exception):
    """The pod cannot start as specified (what the kubelet would refuse)."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"


def make_runtime(
    name: str, image: str | None = None, file_store: Path | None = None, executable_dir: Path | None = None
) -> Runtime:
    """The runtime named on the command line (`process`, `podman`, `docker`, or `container`)."""
    if name not in RUNTIMES:
        raise UserError(f"--runtime {name!r}: use one of {', '.join(RUNTIMES)}")
    if name == "process":
        if image:
            raise UserError("--image needs a container runtime (--runtime podman, docker or container)")
        return ProcessRuntime(executable_dir)
    return ContainerRuntime(name, image=image, file_store=file_store)
