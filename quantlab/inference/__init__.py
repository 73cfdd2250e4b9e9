"""Integer inference, by role: the lab's float-rescale simulation (`float_rescale`: integer sums, float
multipliers), the bit-exact fixed-point engine (`engine`: int8 GEMM, int32 accumulators), and the standalone
NumPy runner of an export (`runner`); the fixed-point arithmetic both of the latter use (`fixed_point`) and
the export format they read (`export_format`)."""
