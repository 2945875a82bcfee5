"""A fixed-pattern sparse matrix times a dense one, differentiable in the dense operand, in CSR both ways.

Every sparse product of the model (the normalised graph Â, the template connections C) has a pattern that is
fixed for a phase, while C's values change each step (alpha schedule, edge dropout). PyTorch's COO product
re-sorts the pattern for every backward pass; keeping the CSR of M and of M^T (with the permutation that maps
M's values onto M^T's) makes both passes one CSR product each.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

torch.sparse.check_sparse_tensor_invariants.disable()  # patterns are built here, sorted and in range
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class SparsePattern:
    """A sparse [n_rows, n_cols] pattern: COO rows/cols in CSR order, and the transpose's value permutation."""

    rows: torch.Tensor
    cols: torch.Tensor
    shape: tuple[int, int]
    crow: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm_t: torch.Tensor

    @classmethod
    def from_coo(cls, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> SparsePattern:
        """Build from (row, col) pairs (duplicates are not merged: callers pass unique pairs)."""
        order = torch.argsort(rows * shape[1] + cols)
        rows, cols = rows[order], cols[order]
        order_t = torch.argsort(cols * shape[0] + rows)
        return cls(
            rows=rows,
            cols=cols,
            shape=shape,
            crow=_crow(rows, shape[0]),
            crow_t=_crow(cols[order_t], shape[1]),
            col_t=rows[order_t],
            perm_t=order_t,
        )

    def to(self, device: torch.device) -> SparsePattern:
        """A copy on `device`."""
        return SparsePattern(
            self.rows.to(device), self.cols.to(device), self.shape, self.crow.to(device), self.crow_t.to(device),
            self.col_t.to(device), self.perm_t.to(device),
        )

    def matmul(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """M @ dense for M with this pattern and `values` (in the pattern's order); gradient flows to `dense`."""
        return _SparseMatmul.apply(self, values.detach(), dense)


def _crow(sorted_rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers of row indices sorted ascending."""
    counts = torch.bincount(sorted_rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor from its parts."""
    return torch.sparse_csr_tensor(crow, col, values, shape)


class _SparseMatmul(torch.autograd.Function):
    """y = M x with dy/dx^T = M^T, computed with the precomputed transposed CSR."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, p: SparsePattern, values: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        ctx.pattern, ctx.values = p, values  # type: ignore[attr-defined]
        return _csr(p.crow, p.cols, values, p.shape) @ dense

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        p, values = ctx.pattern, ctx.values  # type: ignore[attr-defined]
        transposed = _csr(p.crow_t, p.col_t, values[p.perm_t], (p.shape[1], p.shape[0]))
        return None, None, transposed @ grad.contiguous()


@dataclass
class SparseMatrix:
    """A pattern with its values."""

    pattern: SparsePattern
    values: torch.Tensor

    @classmethod
    def from_coo(
        cls, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
    ) -> SparseMatrix:
        """Build from unique (row, col, value) triples in any order."""
        pattern = SparsePattern.from_coo(rows, cols, shape)
        order = torch.argsort(rows * shape[1] + cols)
        return cls(pattern, values[order])

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape."""
        return self.pattern.shape

    def to(self, device: torch.device) -> SparseMatrix:
        """A copy on `device`."""
        return SparseMatrix(self.pattern.to(device), self.values.to(device))

    def to_dense(self) -> torch.Tensor:
        """The dense matrix (for tests and small examples)."""
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense[self.pattern.rows, self.pattern.cols] = self.values
        return dense

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        """M @ dense, differentiable in `dense`."""
        return self.pattern.matmul(self.values, dense)
