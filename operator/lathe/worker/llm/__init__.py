"""The causal-LM rooms of the worker (task causal-lm, runtime onnxruntime-genai).

checkpoint.py  where the checkpoint is, what it is, GGUF -> Hugging Face folder, the memory check
export.py      the onnxruntime-genai model builder, its build cache, and the export's verification
text_data.py   text and .jsonl documents -> token windows, the text coverage checks, the stdlib corpus
metrics.py     perplexity, teacher-forced next-token agreement, multiple-choice accuracy
matmulnbits.py MatMulNBits' defaults and ONNX Runtime's MLAS quantizer (below the pass, quantize and sensitivity)
quantize.py    the weight-only pass (MatMulNBits INT4/INT8: rtn, k-quant, hqq, gptq, awq, mixed)
sensitivity.py which MatMuls cost the most at INT4 (ablation, shared with worker/fallback.py's ranking)
candidates.py  the default search set
generate.py    the generation runtime: load a model folder, generate, time first token and decode
pipeline.py    the stages, on the generic budget gate, benchmark statistic, selection and report
"""
