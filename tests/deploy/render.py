"""A small kustomize for the tests: ``resources`` (files and directories), ``labels`` and
strategic-merge ``patches`` by kind and name — all that deploy/k8s uses, and it refuses
anything else (keep the kustomizations simple, or teach this file and check with kustomize)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "patches"}


def render(directory: Path) -> list[dict]:
    """Every object of the kustomization in ``directory``, as kustomize would emit it."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    assert not unknown, f"{directory}: the test renderer does not know {sorted(unknown)}"
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only `patches: - path:` is supported"
        for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = [o for o in objects if o["kind"] == doc["kind"] and o["metadata"]["name"] == doc["metadata"]["name"]]
            assert len(target) == 1, f"{directory}: patch {patch['path']} matches {len(target)} objects"
            merged = merge(target[0], doc)
            objects[objects.index(target[0])] = merged
    for entry in kustomization.get("labels", []):
        assert set(entry) <= {"pairs"}, "labels: only pairs (no selectors, no templates)"
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"{directory}: an object is defined twice: {names}"
    return objects


def merge(base, patch):
    """Strategic merge as far as deploy/k8s needs it: maps deep-merged, lists of named maps by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = copy.deepcopy(base)
        for item in patch:
            found = [i for i, old in enumerate(out) if old["name"] == item["name"]]
            if found:
                out[found[0]] = merge(out[found[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)
