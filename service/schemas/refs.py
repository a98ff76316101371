"""References resolved only inside the schema: nothing is ever fetched, and no cycle runs forever.

jsonschema, given no registry, falls back to a deprecated one that fetches any `$ref` URI with `urllib`
(`http://`, `file://`...) synchronously, in the event loop. Every validator here gets `REGISTRY`, which
retrieves nothing; and before a schema is used, `check_references` resolves each `$ref`, `$dynamicRef` and
`$recursiveRef` against the schema's own resources (embedded `$id`s and anchors count), so a reference that
points elsewhere, or to nothing, is a SchemaProblem (400, before any model call) instead of a failure at
validation time (after the model was paid). It also finds reference cycles that never descend into the
value (`{"$ref": "#"}`, `$defs` that refer to each other, `allOf` of itself): validating them never ends.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NoReturn

from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

from service.schemas import budget
from service.schemas.drafts import Draft
from service.schemas.problems import SchemaProblem, clip
from service.schemas.walk import children

REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _refuse(uri: str) -> NoReturn:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


REGISTRY: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]


def check_references(schema: dict[str, Any], draft: Draft) -> None:
    """SchemaProblem for a reference that does not resolve inside `schema`, or an endless in-place cycle."""
    try:
        _check_references(schema, draft)
    except (AttributeError, TypeError, ValueError, LookupError) as e:  # `referencing` on shapes it does not expect
        if isinstance(e, SchemaProblem):
            raise
        raise SchemaProblem(
            f"the schema's references cannot be resolved ({type(e).__name__}: {clip(str(e), 120)}); "
            "e.g. draft-04..07 `dependencies` mixing lists and schemas: use one form per object"
        ) from None


def _check_references(schema: dict[str, Any], draft: Draft) -> None:
    spec = draft.specification
    root = spec.create_resource(schema)
    registry = REGISTRY.with_resource(root.id() or "", root).crawl()
    stack: list[tuple[Any, str, Any, bool]] = [(schema, "#", registry.resolver(root.id() or ""), True)]
    paths: dict[int, str] = {}  # id(node) -> where it was first reached
    keep: list[dict[str, Any]] = []  # the nodes, so their ids stay theirs
    edges: defaultdict[int, set[int]] = defaultdict(set)  # in-place: the same value is validated again
    dynamic: defaultdict[str, set[int]] = defaultdict(set)  # $dynamicAnchor name -> nodes
    recursive: set[int] = set()  # nodes with $recursiveAnchor: true
    late: list[tuple[int, str]] = []  # ($dynamicRef / $recursiveRef holder, anchor name or "")
    while stack:
        node, path, resolver, entered = stack.pop()
        if not isinstance(node, dict) or id(node) in paths:
            continue
        budget.check()
        paths[id(node)] = path
        keep.append(node)
        if not entered:
            resolver = resolver.in_subresource(spec.create_resource(node))
        if path != "#" and "$schema" in node and node["$schema"] != schema.get("$schema"):
            raise SchemaProblem(f"{path}: a subschema declares another $schema; one draft per schema", at=path)
        if isinstance(node.get("$dynamicAnchor"), str):
            dynamic[node["$dynamicAnchor"]].add(id(node))
        if node.get("$recursiveAnchor") is True:
            recursive.add(id(node))
        for child in children(node, draft, path):
            if isinstance(child.schema, dict):
                if child.in_place:
                    edges[id(node)].add(id(child.schema))
                stack.append((child.schema, child.path, resolver, False))
        for keyword in REF_KEYWORDS:
            ref = node.get(keyword)
            if not isinstance(ref, str) or not draft.knows(keyword):
                continue
            target, target_resolver = _resolve(resolver, ref, keyword, path)
            if isinstance(target, dict):
                edges[id(node)].add(id(target))
                stack.append((target, ref if ref.startswith("#") else path + f" -> {ref}", target_resolver, True))
            if keyword != "$ref":
                late.append((id(node), ref.partition("#")[2] if keyword == "$dynamicRef" else ""))
    for holder, name in late:  # which anchor a dynamic reference lands on depends on the path taken: any
        edges[holder] |= dynamic.get(name, set()) if name else recursive
    if cycle := _cycle(edges):
        trail = " -> ".join(paths[n] for n in cycle)
        raise SchemaProblem(
            f"the schema refers to itself without descending into the value ({clip(trail, 300)}): "
            "validation would never end",
            cycle=[paths[n] for n in cycle][:20],
        )


def _resolve(resolver: Any, ref: str, keyword: str, path: str) -> tuple[Any, Any]:
    try:
        resolved = resolver.lookup(ref)
    except (Unresolvable, LookupError, ValueError, TypeError) as e:
        if ref.startswith("#"):
            problem = "points to nothing in the schema"
        else:
            problem = ("names another document; references resolve only inside the schema and nothing is ever "
                       "fetched (http:, file:, urn: ...): put what it names under $defs")  # fmt: skip
        raise SchemaProblem(f"{path}: {keyword} {clip(ref)!r} {problem}", at=path, ref=clip(ref)) from e
    if not isinstance(resolved.contents, dict | bool):
        raise SchemaProblem(f"{path}: {keyword} {clip(ref)!r} points to something that is not a schema", at=path)
    return resolved.contents, resolved.resolver


def _cycle(edges: dict[int, set[int]]) -> list[int] | None:
    """One cycle of `edges` (its nodes, the first repeated at the end), or None."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in list(edges):
        if start in state:
            continue
        path: list[int] = [start]
        iterators = [iter(edges.get(start, ()))]
        state[start] = 1
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iterators.append(iter(edges.get(nxt, ())))
    return None
