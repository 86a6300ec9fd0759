"""Parameter trees: nested dicts and lists of arrays. Small helpers to walk, map and flatten them."""

from __future__ import annotations


def map_leaves(fn, tree, *others, collect=False):
    """Apply fn to every array leaf (and the matching leaves of ``others``, same structure).

    Returns a tree of the same structure, or with collect=True a flat list of fn's results in a fixed order.
    """
    out = []

    def walk(node, *rest):
        if isinstance(node, dict):
            return {k: walk(node[k], *(o[k] for o in rest)) for k in node}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(n, *(o[i] for o in rest)) for i, n in enumerate(node))
        value = fn(node, *rest)
        out.append(value)
        return value

    result = walk(tree, *others)
    return out if collect else result


def leaves(tree) -> list:
    """The tree's array leaves as one flat list, in map_leaves' (and flatten's) order."""
    return map_leaves(lambda leaf: leaf, tree, collect=True)


def from_leaves(template, values):
    """The inverse of ``leaves``: a tree of ``template``'s structure whose leaves are ``values``, in order
    (``template``'s own leaves are not read). ``values`` may be one autograd box of a list: it is indexed."""
    n = len(leaves(template))
    if len(values) != n:
        raise ValueError(f"from_leaves: the template has {n} leaves but {len(values)} values were given")
    position = iter(range(n))
    return map_leaves(lambda _: values[next(position)], template)


def plain(tree):
    """The tree with every autograd box removed, at any depth (for checks on shapes, never for arithmetic).

    autograd boxes whatever is being differentiated: the whole tree, or any subtree (params["blocks"] only, say),
    so a box can sit at any level.
    """
    from autograd.tracer import getval

    node = getval(tree)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(plain(v) for v in node)
    return node


def flatten(tree, prefix: str = "") -> dict:
    """{"blocks.0.wq.W": array, ...}: dotted paths, list indices as numbers. The order is the tree's order."""
    flat = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str) or "." in k or not k:
                    raise ValueError(f"tree keys must be non-empty strings without '.', got {k!r} under {path!r}")
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}" if path else str(i))
        else:
            flat[path] = node

    walk(tree, prefix)
    return flat


def unflatten(flat: dict, n_blocks: int | None = None) -> dict:
    """Inverse of flatten: numeric path parts become list indices. ``n_blocks`` pads "blocks" with empty
    dicts up to that length (an adapter on some layers only has no keys for the others)."""
    root: dict = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            idx = sorted(int(k) for k in node)
            if n_blocks is None and idx != list(range(len(idx))):
                raise ValueError(f"tree list indices must be 0..n-1, got {idx}")
            if n_blocks is not None and idx[-1] >= n_blocks:
                raise ValueError(f"block index {idx[-1]} out of range for a model with {n_blocks} blocks")
            size = max(idx) + 1 if n_blocks is None else n_blocks
            return [node.get(str(i), {}) for i in range(size)]
        return node

    tree = listify(root)
    if n_blocks is not None:
        blocks = tree.get("blocks", [])
        if isinstance(blocks, dict) and not blocks:
            blocks = []
        tree["blocks"] = list(blocks) + [{} for _ in range(n_blocks - len(blocks))]
    return tree
