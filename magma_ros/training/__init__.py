"""Training: rosbag2 recordings -> Magma training data -> fine-tuned checkpoints. ROS-free.

One module per job (see each module's docstring): ``records`` (the on-disk layout and the
record types every job shares), ``spec`` (the per-robot dataset spec), ``episodes`` (bag ->
steps at the control rate), ``statistics``, ``dataset`` (write/read), ``trace_labels``
(Trace-of-Mark labels from point tracks), ``collate``, ``trainer``, ``parallelize``.
"""
