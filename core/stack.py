"""Named adapters stacked on a base pipeline at chosen scales, by patching weights in place.

diffusers stacks adapters by wrapping every target module in peft layers: each extra adapter adds work to every
denoising step, loading walks the whole model once per adapter (so the N-th load is slower than the first), and its
fuse/unfuse subtracts deltas again, which drifts in fp16 and corrupts the base when scales change in between.
Here, as in ComfyUI and InvokeAI, a module's weight is recomputed from a saved copy of the original::

    W = W₀ + Σᵢ sᵢ · ΔWᵢ        (in float32, rounded once to the weight's dtype)

so the patched pipeline runs at the base's speed, restoring copies ``W₀`` back bit for bit, and switching stacks
touches only the modules whose contributions change. The pipeline stays an ordinary diffusers pipeline.

That is ``mode="merge"``. ``mode="bypass"`` leaves every base weight as it is and adds the adapters in the forward
pass instead (:mod:`lorastack.core.bypass`); ``mode="auto"`` (the default) bypasses the layers whose weights cannot
be patched exactly, quantized or offloaded ones (:mod:`lorastack.core.quantized`), and merges the others, layer by
layer; :meth:`AdapterStack.apply_report` says which.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lorastack.adapters import Adapter, FullLayer, Layer, LoRALayer, read_adapter
from lorastack.adapters.constants import FAMILY_NAMES, UNKNOWN
from lorastack.adapters.errors import shown
from lorastack.adapters.families import FAMILY_TABLE, block_summary
from lorastack.adapters.slices import RowSliceLayer

from .bypass import Bypass
from .embeddings import add_embeddings, remove_embeddings
from .errors import IncompatibleAdapterError, ScaleError, UnknownAdapterError
from .modules import ModuleIndex, block_counts, denoiser, pipeline_family
from .quantized import weight_shape
from .scales import asked_blocks, compile_scale
from .stack_modes import APPLY_MODES, ApplyModes, Contribution
from .stack_records import LoadedAdapter, LoadReport, _moved

logger = logging.getLogger(__name__)

#: Adapter names: what prompts (``<lora:name:0.8>``) and the CLI can spell; registry references
#: (``me/style:v1``, ``me/style@2``) are names as they are written.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@/+:-]{0,199}$")
NAME_RULE = "use letters, digits and . _ - / @ + :, starting with a letter or digit, at most 200 characters"


class AdapterStack(ApplyModes):
    """Load named adapters once; make any combination of them active at any scales; restore the base exactly.

    >>> stack = AdapterStack(pipe)
    >>> stack.load("style", "style.safetensors")
    >>> stack.load("subject", "aawxbc.safetensors")
    >>> stack.activate({"style": 0.8, "subject": 0.5})     # exactly this stack is now in the weights
    >>> stack.activate({"style": {"unet": 0.8, "text_encoder": 0.0}})
    >>> stack.deactivate()                                  # the base, bit for bit
    """

    def __init__(self, pipe, mode: str = "auto"):
        if mode not in APPLY_MODES:
            raise ScaleError(f"apply mode {mode!r} is not one of {', '.join(APPLY_MODES)}")
        self.pipe = pipe
        self.mode = mode
        self.bypass = Bypass()  # the bypassed modules' forward-pass paths
        self._modes: dict[str, tuple[str, str]] = {}  # module → (merge | bypass, why)
        self.family = pipeline_family(pipe)
        self.blocks = block_counts(pipe)  # transformer block counts, from the model's config
        self._index: ModuleIndex | None = None
        self._adapters: dict[str, LoadedAdapter] = {}
        self._active: dict[str, Any] = {}
        self._fused = True
        self._applied: dict[str, Contribution] = {}  # what each patched module's weight holds now
        self._originals: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._absmax: dict[str, float] = {}  # max |W0| per patched module, for the finiteness bound
        self._parent_deltas: dict[int, torch.Tensor] = {}  # fused layers' deltas while one activation runs
        self._warned: set[tuple[str, tuple[str, ...]]] = set()
        #: How many module weights the last activation rewrote (switching cost is proportional to it).
        self.last_changed = 0

    # --- loading ---------------------------------------------------------------------------------------------
    @property
    def index(self) -> ModuleIndex:
        if self._index is None:
            self._index = ModuleIndex(self.pipe)
        return self._index

    @property
    def loaded(self) -> list[str]:
        return list(self._adapters)

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def get(self, name: str) -> LoadedAdapter:
        if name not in self._adapters:
            raise UnknownAdapterError(self._unknown_message([name]))
        return self._adapters[name]

    def load(
        self,
        name: str,
        source: str | Path | Adapter,
        *,
        strict: bool = False,
        allow_pickle: bool = False,
        label: str | None = None,
        trigger_words: list[str] | None = None,
    ) -> LoadReport:
        """Read an adapter (a file path or an :class:`Adapter`), check it against the base, keep it on the device.

        An adapter for another family, or one that matches no module, is an error naming both. One that matches
        only partly is loaded with a warning (an error with ``strict``); its :class:`LoadReport` lists what matched.
        ``label`` is how the adapter's source is recorded (a registry reference, say); by default its path.
        ``trigger_words`` replace the file's own (a registry version keeps the words given at import).
        """
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ScaleError(f"invalid adapter name {name!r}: {NAME_RULE}")
        if name in self._adapters:
            raise IncompatibleAdapterError(f"an adapter named '{name}' is already loaded; unload it first")
        adapter = source if isinstance(source, Adapter) else read_adapter(source, allow_pickle=allow_pickle)
        if label is None:
            label = str(adapter.path or source) if not isinstance(source, Adapter) else str(adapter.path or name)
        base_name = _label(self.family)
        probe = adapter.probe
        # a family the file declares (and the widths do not contradict) is what it was made for, even when every
        # layer happens to fit this base's shapes
        if probe.declared is not None and probe.declared_family != self.family:
            value = shown(adapter.metadata.raw.get(probe.declared, ""))
            raise IncompatibleAdapterError(
                f"adapter '{name}' ({label}) declares {_label(probe.declared_family)} ({probe.declared} is "
                f"{value}) but the base is {base_name}"
            )
        matched, unmatched = self._match(adapter)
        # an undeclared family can be a topology guess (small models); an adapter whose every layer fits the base's
        # modules, shapes included, is for this base whatever the guess said
        if adapter.family not in (UNKNOWN, self.family) and (unmatched or not matched):
            raise IncompatibleAdapterError(
                f"adapter '{name}' ({label}) is for {_label(adapter.family)} but the base is {base_name}"
            )
        report = LoadReport(name, label, adapter.family, sorted(matched), unmatched, list(adapter.unrecognized_keys))
        if not matched:
            first, reason = next(iter(unmatched.items()), ("(no layers)", ""))
            raise IncompatibleAdapterError(
                f"adapter '{name}' ({label}, {_label(adapter.family)}) matches no module of the base "
                f"({base_name}): e.g. {first}: {reason}"
            )
        for module_name in matched:
            self.module_mode(module_name)  # a layer merge mode cannot patch is refused before anything loads
        if not report.complete:
            if strict:
                raise IncompatibleAdapterError(report.summary())
            logger.warning(report.summary())
        device = self._device()
        # LoRA factors are small: keep them in float32 on the device, ready for the patching GEMM
        layers = _moved(matched, device)
        tokens = add_embeddings(self.pipe, name, adapter.embeddings) if adapter.embeddings else []
        words = list(trigger_words) if trigger_words is not None else None
        self._adapters[name] = LoadedAdapter(
            name, adapter, layers, report, label, tokens=tokens, given_trigger_words=words
        )
        return report

    def _device(self) -> torch.device:
        return next(denoiser(self.pipe).parameters()).device

    def _match(self, adapter: Adapter) -> tuple[dict[str, Layer], dict[str, str]]:
        matched: dict[str, Layer] = {}
        unmatched: dict[str, str] = {}
        for module_name, layer in adapter.layers.items():
            target = self.index.get(module_name)
            if target is None:
                unmatched[module_name] = "no such module in the base"
                continue
            shape = weight_shape(target.module)  # a quantized weight's logical shape, not its packed storage
            if layer.out_features != shape[0] or layer.in_numel != math.prod(shape[1:]):
                unmatched[module_name] = f"layer for shape {_shape(layer)} does not fit weight {shape}"
                continue
            if isinstance(layer, FullLayer) and layer.diff_b is not None and target.module.bias is None:
                unmatched[module_name] = "carries a bias difference but the module has no bias"
                continue
            matched[module_name] = layer
        return matched, unmatched

    def unload(self, name: str) -> None:
        """Forget an adapter (taking it out of the active stack first)."""
        self.get(name)
        if name in self._active:
            self.activate({n: s for n, s in self._active.items() if n != name})
        if self._adapters[name].tokens:
            remove_embeddings(self.pipe, self._adapters[name].tokens)
        del self._adapters[name]

    # --- activation ------------------------------------------------------------------------------------------
    @property
    def active(self) -> dict[str, Any]:
        """The active stack: adapter name → scale specification."""
        return dict(self._active)

    @property
    def fused(self) -> bool:
        return self._fused

    def activate(self, scales: Mapping[str, Any]) -> None:
        """Make exactly ``scales`` (name → number or scale dict, see :mod:`lorastack.core.scales`) the active stack.

        Everything is validated before any weight changes; if applying fails midway the weights are put back.
        """
        missing = [n for n in scales if n not in self._adapters]
        if missing:
            raise UnknownAdapterError(self._unknown_message(missing))
        desired = self._contributions(scales)
        if self._fused:
            self._apply(desired)
        self._active = dict(scales)

    def deactivate(self) -> None:
        """No adapter active: every patched weight is restored to the base, bit for bit."""
        self.activate({})

    def set_scale(self, name: str, scale: Any) -> None:
        """Change one adapter's scale in the active stack (adding it if it was not active)."""
        self.activate({**self._active, name: scale})

    def unfuse(self) -> None:
        """Put the base weights back but remember the active stack (:meth:`fuse` applies it again)."""
        self._apply({})
        self._fused = False

    def fuse(self) -> None:
        """Apply the remembered active stack to the weights (the normal state after :meth:`activate`)."""
        self._fused = True
        self._apply(self._contributions(self._active))

    @contextlib.contextmanager
    def activated(self, scales: Mapping[str, Any]) -> Iterator[None]:
        """Activate ``scales`` for the duration of a ``with`` block, then return to the previous stack."""
        previous = dict(self._active)
        self.activate(scales)
        try:
            yield
        finally:
            self.activate(previous)

    def detach(self):
        """Keep the current weights as the pipeline's new base and forget every adapter; returns the pipeline."""
        if self.bypass.active():
            raise IncompatibleAdapterError(
                f"{len(self.bypass.active())} layers hold adapters in bypass mode (e.g. {self.bypass.active()[0]}), "
                "which are not in the weights; detach needs --apply merge"
            )
        self.bypass.clear()
        self._applied.clear()
        self._originals.clear()
        self._absmax.clear()
        self._adapters.clear()
        self._active.clear()
        return self.pipe

    def _unknown_message(self, names: list[str]) -> str:
        loaded = ", ".join(self._adapters) or "none"
        return f"adapter name(s) {', '.join(map(repr, names))} not loaded; loaded adapters: {loaded}"

    def _contributions(self, scales: Mapping[str, Any]) -> dict[str, Contribution]:
        per_module: dict[str, list[tuple[str, float]]] = {}
        for name, spec in scales.items():
            scale_of = compile_scale(spec, self.family, self.blocks)
            self._report_untouched_blocks(name, spec)
            for module_name in self._adapters[name].layers:
                s = scale_of(module_name)
                if s != 0.0:
                    per_module.setdefault(module_name, []).append((name, s))
        return {m: tuple(sorted(c)) for m, c in per_module.items()}

    def _report_untouched_blocks(self, name: str, spec: Any) -> None:
        """Warn when a scale names transformer blocks the adapter has no layer in (the value would change nothing)."""
        asked = asked_blocks(spec)
        if not asked:
            return
        touched = self._adapters[name].blocks(self.family)
        groups = {g for g, _ in touched}
        missing = sorted(k for k in asked if (k not in groups if "." not in k else tuple_block(k) not in touched))
        if missing and (name, tuple(missing)) not in self._warned:
            self._warned.add((name, tuple(missing)))  # once per adapter and blocks, not at every activation
            have = ", ".join(sorted(groups)) or "no block"
            logger.warning(
                f"adapter '{name}': scale for {', '.join(missing)} changes nothing (the adapter touches {have} blocks "
                f"only: {block_summary(touched)})"
            )

    # --- weight patching -------------------------------------------------------------------------------------
    def _apply(self, desired: dict[str, Contribution]) -> None:
        changed = sorted(m for m in {*self._applied, *desired} if self._applied.get(m, ()) != desired.get(m, ()))
        self.last_changed = len(changed)
        done: list[str] = []
        try:
            for module_name in changed:
                done.append(module_name)  # before writing: a failed write may have changed the weight
                self._write(module_name, desired.get(module_name, ()))
        except BaseException:
            for module_name in done:  # put back what this call changed, the failed module included
                self._write(module_name, self._applied.get(module_name, ()))
            raise
        finally:
            self._parent_deltas.clear()
        self._applied = {m: c for m, c in desired.items() if c}

    def _slice_delta(self, layer: RowSliceLayer, shape: tuple[int, ...]) -> torch.Tensor:
        """A fused layer's slice (a LoKr on Flux's ``qkv``): the fused delta is computed once for its projections,
        which the sorted module order writes one after another, and only the last two are kept."""
        key = id(layer.parent)
        if key not in self._parent_deltas:
            if len(self._parent_deltas) >= 2:
                self._parent_deltas.pop(next(iter(self._parent_deltas)))
            self._parent_deltas[key] = layer.parent_delta()
        return layer.rows_of(self._parent_deltas[key]).reshape(shape)

    @torch.no_grad()
    def _write(self, module_name: str, contributions: Contribution) -> None:
        if self.module_mode(module_name)[0] == "bypass":
            self._write_bypass(module_name, contributions)
            return
        module = self.index.get(module_name).module
        weight, bias = module.weight, module.bias
        if not contributions:
            original = self._originals.pop(module_name, None)
            if original is not None:
                weight.copy_(original[0])
                if bias is not None and original[1] is not None:
                    bias.copy_(original[1])
            return
        if module_name not in self._originals:
            self._originals[module_name] = (weight.detach().clone(), None if bias is None else bias.detach().clone())
            self._absmax[module_name] = float(weight.detach().abs().max())
        w0, b0 = self._originals[module_name]
        plain, other = [], []
        for name, s in contributions:
            layer = self._adapters[name].layers[module_name]
            (plain if _is_plain_lora(layer) else other).append((name, s, layer))
        out_features = w0.shape[0]
        direct = w0.dtype == torch.float32 and not other and weight.is_contiguous() and weight.device == w0.device
        if plain:
            # All plain LoRA terms at once: W = W0 + [s·α/r·up₁ | s·α/r·up₂ | …] @ [down₁; down₂; …], one GEMM
            # and one pass over the weight; written straight into the parameter when it is float32.
            up = torch.cat([(layer.up.reshape(out_features, -1) * (s * layer.scale)) for _, s, layer in plain], 1)
            down = torch.cat([layer.down.reshape(layer.rank, -1) for _, _, layer in plain], 0)
            up, down = up.to(w0.device, torch.float32), down.to(w0.device, torch.float32)
            # |W0 + up @ down| ≤ max|W0| + max row-sum|up| · max|down|: usually proves the result finite
            bound = float(up.abs().sum(1).max()) * float(down.abs().max()) + self._absmax[module_name]
            if direct:
                torch.addmm(w0.view(out_features, -1), up, down, out=weight.view(out_features, -1))
                new_weight = None
            else:
                new_weight = torch.addmm(w0.float().view(out_features, -1), up, down).view(w0.shape)
        else:
            new_weight = w0.float().clone()
        if other:
            bound = float("inf")  # LyCORIS, DoRA and full layers: no cheap bound, every value is looked at
        new_bias = (
            b0.float().clone()
            if b0 is not None and any(layer.bias_delta() is not None for *_, layer in other)
            else None
        )
        for _, s, layer in other:
            if layer.is_dora:
                delta = layer.delta(w0.float().to(_layer_device(layer)))
            elif isinstance(layer, RowSliceLayer):
                delta = self._slice_delta(layer, tuple(w0.shape))
            else:
                delta = layer.delta(shape=tuple(w0.shape))
            new_weight.add_(delta.to(new_weight.device), alpha=s)
            bias_delta = layer.bias_delta()
            if bias_delta is not None and new_bias is not None:
                new_bias.add_(bias_delta.to(new_bias.device), alpha=s)
        if new_weight is not None:
            weight.copy_(new_weight)
        # Finiteness: a bound from the factors usually proves it; otherwise look at every value.
        if bound > torch.finfo(weight.dtype).max / 2 and not torch.isfinite(weight).all():
            names = ", ".join(n for n, _ in contributions)
            raise IncompatibleAdapterError(f"adapter(s) {names} make the weight of {module_name} non-finite")
        if new_bias is not None:
            bias.copy_(new_bias.to(bias.dtype))
        elif b0 is not None and bias is not None and not torch.equal(bias, b0):
            bias.copy_(b0)


def _label(family: str) -> str:
    return FAMILY_NAMES.get(family) or (FAMILY_TABLE[family].label if family in FAMILY_TABLE else family)


def tuple_block(key: str) -> tuple[str, int]:
    group, _, index = key.partition(".")
    return group, int(index)


def _is_plain_lora(layer: Layer) -> bool:
    return isinstance(layer, LoRALayer) and layer.mid is None and not layer.is_dora


def _layer_device(layer: Layer) -> torch.device:
    return next(iter(layer.tensors().values())).device


def _shape(layer: Layer) -> tuple[int, ...]:
    return layer.natural_shape or (layer.out_features, layer.in_numel)
