"""Embedding lookup: row ids of a table. Differentiable in the table only (ids are integers)."""

from autograd.extend import defvjp_argnums, primitive

from ..backend import array_module


@primitive
def embedding(ids, table):
    """ids (...) integer, table (n, d) -> (..., d)."""
    return table[ids]  # (..., d)


def _embedding_vjp(argnums, y, args, kwargs):
    ids, table = args
    if argnums != (1,):
        raise NotImplementedError("embedding is differentiable in the table only")

    def vjp(g):  # g (..., d)
        xp = array_module(g)
        d = table.shape[1]
        grad = xp.zeros(table.shape, dtype=g.dtype)  # (n, d)
        # Rows used twice accumulate both gradients. add.at on flat indices (row·d + column) takes NumPy's fast
        # 1-D path (7x faster than add.at on rows) and adds the same numbers in the same order.
        flat = (ids.reshape(-1, 1).astype(xp.int64) * d + xp.arange(d)).reshape(-1)  # (N·d,)
        xp.add.at(grad.reshape(-1), flat, g.reshape(-1))
        return (grad,)

    return vjp


defvjp_argnums(embedding, _embedding_vjp)
