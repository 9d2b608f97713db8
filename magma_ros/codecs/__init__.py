"""ROS-free codecs between Magma's text/token outputs and robot-usable values.

* :mod:`.actions` — 7 action tokens <-> binned values <-> metric actions (Magma's exact
  conventions), with :mod:`.action_statistics` (q01/q99/mask sets) and :mod:`.gripper`
  (raw gripper labels, binarization at 0.5, hysteresis).
* :mod:`.marks` — Set-of-Mark: place, draw and parse numbered marks.
* :mod:`.traces` — Trace-of-Mark: query text, answer parsing/formatting, trace drawing.
* :mod:`.grid` — the 256 x 256 text coordinate grid shared by marks and traces.

Parsers of model text never raise; everything else raises :class:`CodecError`
(or its subclass :class:`StatisticsError`) for bad input.
"""

from .action_statistics import (
    ACTION_DIM,
    ACTION_DIM_NAMES,
    BRIDGE_ORIG,
    DEFAULT_MASK,
    GOOGLE_ROBOT,
    GRIPPER_DIM,
    PUBLISHED_STATISTICS,
    ActionStatistics,
    load_dataset_statistics,
    resolve_statistics,
)
from .actions import DEFAULT_N_BINS, LLAMA3_BASE_VOCAB_SIZE, ActionCodec, DecodedAction, TokenRange
from .errors import CodecError, StatisticsError
from .grid import (
    GRID_SIZE,
    GridPoint,
    ImageSize,
    PixelPoint,
    grid_point_to_pixel,
    grid_to_pixel,
    pixel_point_to_grid,
    pixel_to_grid,
)
from .gripper import GRIPPER_THRESHOLD, GripperHysteresis, binarize_gripper, gripper_label
from .marks import (
    Mark,
    MarkParse,
    MarkPlacement,
    MarkStyle,
    assign_mark_ids,
    draw_marks,
    format_marks,
    mark_style,
    parse_marks,
    place_marks_at_points,
    place_marks_on_grid,
    select_spaced_points,
)
from .traces import (
    DEFAULT_TOM_STEPS,
    TRACE_END,
    TRACE_START,
    TraceParse,
    TracePoints,
    build_tom_query,
    draw_traces,
    format_traces,
    parse_traces,
    trace_color,
)

__all__ = [
    "ACTION_DIM",
    "ACTION_DIM_NAMES",
    "BRIDGE_ORIG",
    "DEFAULT_MASK",
    "DEFAULT_N_BINS",
    "DEFAULT_TOM_STEPS",
    "GOOGLE_ROBOT",
    "GRID_SIZE",
    "GRIPPER_DIM",
    "GRIPPER_THRESHOLD",
    "LLAMA3_BASE_VOCAB_SIZE",
    "PUBLISHED_STATISTICS",
    "TRACE_END",
    "TRACE_START",
    "ActionCodec",
    "ActionStatistics",
    "CodecError",
    "DecodedAction",
    "GridPoint",
    "GripperHysteresis",
    "ImageSize",
    "Mark",
    "MarkParse",
    "MarkPlacement",
    "MarkStyle",
    "PixelPoint",
    "StatisticsError",
    "TokenRange",
    "TraceParse",
    "TracePoints",
    "assign_mark_ids",
    "binarize_gripper",
    "build_tom_query",
    "draw_marks",
    "draw_traces",
    "format_marks",
    "format_traces",
    "grid_point_to_pixel",
    "grid_to_pixel",
    "gripper_label",
    "load_dataset_statistics",
    "mark_style",
    "parse_marks",
    "parse_traces",
    "pixel_point_to_grid",
    "pixel_to_grid",
    "place_marks_at_points",
    "place_marks_on_grid",
    "resolve_statistics",
    "select_spaced_points",
    "trace_color",
]
