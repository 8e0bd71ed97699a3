"""Model outputs: ``flax.struct`` dataclasses with transformers' LXMERT field names.

Optional fields are None unless requested (``output_hidden_states`` / ``output_attentions``) or
produced by a head. Shapes use B = batch, L = text length, N = boxes, H = hidden, nh = heads.
"""

from __future__ import annotations

import jax
from flax import struct

Array = jax.Array


@struct.dataclass
class LxmertModelOutput:
  """Backbone outputs.

  Attributes:
    language_output: final language stream [B, L, H].
    vision_output: final object stream [B, N, H].
    pooled_output: tanh(dense(language_output[:, 0])) [B, H].
    language_hidden_states: as transformers: the output of every language layer then of every
      cross-modality layer's language stream (l_layers + x_layers entries, each [B, L, H]); the
      embedding output is NOT included.
    vision_hidden_states: the output of every object-relationship layer then of every
      cross-modality layer's object stream (r_layers + x_layers entries, each [B, N, H]).
    language_attentions: per language layer [B, nh, L, L].
    vision_attentions: per object-relationship layer [B, nh, N, N].
    cross_encoder_attentions: per cross-modality layer, language->vision [B, nh, L, N] (the only
      cross map transformers returns).
    cross_encoder_attentions_vision_to_language: per cross-modality layer [B, nh, N, L].
    cross_encoder_language_self_attentions: per cross-modality layer [B, nh, L, L].
    cross_encoder_vision_self_attentions: per cross-modality layer [B, nh, N, N].
  """

  language_output: Array | None = None
  vision_output: Array | None = None
  pooled_output: Array | None = None
  language_hidden_states: tuple[Array, ...] | None = None
  vision_hidden_states: tuple[Array, ...] | None = None
  language_attentions: tuple[Array, ...] | None = None
  vision_attentions: tuple[Array, ...] | None = None
  cross_encoder_attentions: tuple[Array, ...] | None = None
  cross_encoder_attentions_vision_to_language: tuple[Array, ...] | None = None
  cross_encoder_language_self_attentions: tuple[Array, ...] | None = None
  cross_encoder_vision_self_attentions: tuple[Array, ...] | None = None


@struct.dataclass
class LxmertForPreTrainingOutput(LxmertModelOutput):
  """Backbone fields plus every pre-training head.

  Attributes:
    prediction_logits: MLM logits [B, L, vocab_size].
    cross_relationship_score: matching logits [B, 2]; index 1 = "sentence matches image".
    question_answering_score: QA logits [B, num_qa_labels].
    obj_logits: object-class logits [B, N, num_object_labels] (``decoder_dict.obj``).
    attr_logits: attribute logits [B, N, num_attr_labels] (``decoder_dict.attr``).
    feat_output: regressed RoI features [B, N, visual_feat_dim] (``decoder_dict.feat``).
  """

  prediction_logits: Array | None = None
  cross_relationship_score: Array | None = None
  question_answering_score: Array | None = None
  obj_logits: Array | None = None
  attr_logits: Array | None = None
  feat_output: Array | None = None


@struct.dataclass
class LxmertForQuestionAnsweringOutput(LxmertModelOutput):
  """Backbone fields plus ``question_answering_score`` [B, num_qa_labels]."""

  question_answering_score: Array | None = None


@struct.dataclass
class LxmertForNLVR2Output(LxmertModelOutput):
  """Backbone fields (over the 2B interleaved image-sentence rows) plus ``logits`` [B, 2].

  The backbone fields have leading dimension 2B in the order (ex0-img0, ex0-img1, ex1-img0, ...).
  """

  logits: Array | None = None
