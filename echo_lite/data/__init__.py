"""The data side of echo_lite: the synthetic world, real-format adapters, captions, the
QA-CoT teachers, the filters, and the datasets on disk (ECHO_METHOD.md section 3)."""
