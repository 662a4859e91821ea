#!/usr/bin/env bash
# On the lent GPU machine, after a training session: the GPU figures of issues 15, 16 and 17 in one
# call (one H200, ~6-8 minutes; each step bounded, every result written to $OUT as it finishes):
#   1. issue 15: the 5B DiT chunk with the self-attention projections in bf16 (default) and in fp32 as
#      the release computes them, with the agreement of each with an fp32 forward (bench/dit_5b.py)
#   2. issue 16: `mg3 rollouts` with 64 envs of the embedded model on the GPU (frames/s written)
#   3. issue 17: one minute of `mg3 play` with the 5B architecture (random weights) through the
#      browserless page (bench/play.py --client python)
#      (play_compiled: the same with --compile; the cold compile, ~150 s, comes first)
#   4. issue 14: where the 5B env's host time per chunk goes (bench/env_5b.py --profile: torch.profiler
#      and cProfile of one steady chunk; the trace comes back gzipped)
#   5. issue 14: peak memory and decode time with one latent per decoder call (RuntimeOptions.decode_segment
#      1; measured 2026-12-02: the same 24.1 GiB peak as the release's 4, step "decode")
#      (decode_compiled: the decoder as one torch.compile region, RuntimeOptions.compile_decoder, its decode
#      time and frames against eager in the same run; measured 2026-12-02: 0.130 vs 0.235 s, 50.9 dB, but
#      peak 28.7 vs 24.1 GiB; decode_compiled_seg1: the same with one latent per decoder call, a quarter
#      of the activations; every env_5b row now gives the peak within DiT / decode / outside)
#   6. issue 14: peak memory with the text encoder's weights in host memory between encodings
#      (RuntimeOptions.text_offload; the held memory before the first step in the table; step "offload")
#   7. issue 14: every fast option at once, compiled DiT blocks + FP8 linears + compiled decoder, against
#      eager (step "fastest": ~150 s of cold compile first; measured 2026-12-02: 1.455 s/chunk, 27.5 frames/s,
#      peak 26.3 GiB in the compiled decoder, warm reset 29.6 s); "fastest_seg1": the same with one latent
#      per decoder call (the compiled decoder's working set) after the stride-guard fix (the warm reset)
#   8. issue 14: FlashAttention-3 (the fa3-fwd wheel, carry .carry/fa3 beside .carry/gym): step "fa3" the fastest
#      configuration with FP8 attention (attention 'fa3_fp8', per-head scales) against the eager bf16 path with
#      cuDNN attention, after the fa3 GPU tests; "fa3_bf16" the same with bf16 FA3; "profile_fastest" where its
#      chunk's device time goes by kernel kind (matmul, attention, fused non-matmul, ...) and its top kernels
#   9. the GPU-marked tests of the VAE, runtime options and text encoder (step "gputests"; log to $OUT)
# Carry .carry/gym (gymnasium and websockets wheels); rollouts also needs PyAV, carried during the
# training session (.carry/av with the 4th call). Usage, from the repository root (run tool:
# carry [".carry/gym"], timeout_s 600):  bash bench/gpu/extras.sh [precision] [rollouts] [play] [play_compiled] [profile] [decode] [decode_compiled] [decode_compiled_seg1] [fastest] [fastest_seg1] [fa3] [fa3_bf16] [fa3_profile] [fp8_rows] [fa3_ffn] [fa3_qk] [cudnn_bench] [profile_fastest] [offload] [gputests]
set -u -o pipefail
source bench/gpu/parts.sh
out=${OUT:-bench/results}
steps=${*:-precision rollouts play profile decode offload}
for step in $steps; do
  case $step in
    precision)
      timeout 200 python3 bench/dit_5b.py --attention cudnn --agreement --out "$out/dit_5b_precision_bf16_h200.json" 2>&1 | grep -v '^USDT:' | tail -25
      timeout 150 python3 bench/dit_5b.py --attention cudnn --self-attn-projections fp32 --out "$out/dit_5b_precision_fp32_h200.json" 2>&1 | grep -v '^USDT:' | tail -25
      ;;
    rollouts)
      rm -rf /tmp/roll64
      timeout 200 python3 -m mg3_env.cli rollouts --model default --num-envs 64 --episodes 64 --max-chunks 2 \
        --policy random --device cuda --out /tmp/roll64 2>&1 | tr '\r' '\n' | grep -v '^USDT:' | tail -3 | tee "$out/rollouts_64_h200.log"
      ;;
    play)
      timeout 240 python3 bench/play.py --model mg3-5b-random --device cuda --client python --seconds 60 \
        --out "$out/play_5b_h200.json" 2>&1 | grep -v '^USDT:' | tail -12
      ;;
    play_compiled)
      timeout 400 python3 bench/play.py --model mg3-5b-random --device cuda --client python --seconds 60 --compile \
        --out "$out/play_5b_compiled_h200.json" 2>&1 | grep -v '^USDT:' | tail -12
      ;;
    profile)
      timeout 200 python3 bench/env_5b.py --chunks 2 --attention cudnn --profile "$out/env_5b_profile_h200" \
        --json "$out/env_5b_profile_h200.json" 2>&1 | grep -v '^USDT:' | tail -40
      ;;
    decode)
      timeout 150 python3 bench/env_5b.py --chunks 2 --attention cudnn --decode-segment 1 \
        --json "$out/env_5b_decode_segment_1_h200.json" 2>&1 | grep -v '^USDT:' | tail -6
      ;;
    decode_compiled)
      timeout 300 python3 bench/env_5b.py --chunks 2 --attention cudnn --compile-decoder --against-eager \
        --json "$out/env_5b_compiled_decoder_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    fastest)
      timeout 450 python3 bench/env_5b.py --chunks 3 --attention cudnn --compile --quantize fp8 --compile-decoder \
        --against-eager --json "$out/env_5b_fastest_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    fastest_seg1)
      # the fastest configuration with one latent per decoder call: the compiled decoder's working set
      # (16-19 GiB at 4 latents per call against eager's 6) should fall ~4x; and the warm reset after the
      # stride-guard fix (29.6 s measured on 2026-12-02)
      timeout 450 python3 bench/env_5b.py --chunks 3 --attention cudnn --compile --quantize fp8 --compile-decoder \
        --decode-segment 1 --against-eager --json "$out/env_5b_fastest_seg1_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    fa3)
      # the fastest configuration with FlashAttention-3 (carry .carry/fa3): FP8 attention (measured 931 TFLOP/s
      # at the 5B shapes, cuDNN bf16 632), accuracy against the eager bf16 path with cuDNN attention; then bf16 FA3
      python3 -c "import fa3_fwd_interface" || { echo "fa3: the fa3-fwd wheel is not installed (carry .carry/fa3)" >&2; continue; }
      timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime.py -k fa3 2>&1 | grep -v '^USDT:' | tail -4
      timeout 450 python3 bench/env_5b.py --chunks 3 --attention fa3_fp8 --eager-attention cudnn --compile --quantize fp8 \
        --compile-decoder --decode-segment 1 --against-eager --attention-tflops 931 \
        --json "$out/env_5b_fastest_fa3fp8_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    profile_fastest)
      # where the fastest configuration's chunk goes on the device (kernel kinds: matmul, attention, fused
      # non-matmul work, ...; the top kernels), against its floor: the DiT at 1.64x of it on 2026-12-02
      timeout 300 python3 bench/env_5b.py --chunks 2 --attention fa3_fp8 --compile --quantize fp8 --compile-decoder \
        --decode-segment 1 --attention-tflops 931 --profile "$out/env_5b_profile_fastest_h200" \
        --json "$out/env_5b_profile_fastest_h200.json" 2>&1 | grep -v '^USDT:' | tail -40
      ;;
    fa3_profile)
      # the fastest configuration (fa3_fp8): its profile (one more chunk; alone, as --profile profiles the first
      # configuration, which --against-eager makes the eager one), then frames/s and accuracy against eager bf16
      python3 -c "import fa3_fwd_interface" || { echo "fa3_profile: the fa3-fwd wheel is not installed (carry .carry/fa3)" >&2; continue; }
      timeout 300 python3 bench/env_5b.py --chunks 2 --attention fa3_fp8 --compile --quantize fp8 --compile-decoder \
        --decode-segment 1 --attention-tflops 931 --profile "$out/env_5b_profile_fa3fp8_h200" \
        --json "$out/env_5b_fa3fp8_profile_h200.json" 2>&1 | grep -v '^USDT:' | tail -30
      timeout 250 python3 bench/env_5b.py --chunks 3 --attention fa3_fp8 --eager-attention cudnn --compile --quantize fp8 \
        --compile-decoder --decode-segment 1 --against-eager --attention-tflops 931 \
        --json "$out/env_5b_fa3fp8_h200.json" 2>&1 | grep -v '^USDT:' | tail -12
      ;;
    fp8_rows)
      # issue 14: the one-pass Triton row quantisation (world_model/fp8_rows.py) against the compiled torch path at the
      # 5B shapes (the FFN's GELU + quantisation: 0.85 ms a call, 77 ms a chunk, in session 16's profile; from session
      # 17 also the modulated LayerNorm's, ~62 ms a chunk in inductor's kernels), and their tests
      timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime.py -k row_quantisation 2>&1 | grep -v '^USDT:' | tail -3
      timeout 200 python3 bench/fp8_rows.py --json "$out/fp8_rows_h200.json" 2>&1 | grep -v '^USDT:' | tail -10
      ;;
    fa3_ffn)
      # the fastest configuration with the FFNs' bias + GELU + FP8 quantisation in that kernel (RuntimeOptions.fp8_ffn_kernel),
      # frames/s and accuracy against eager bf16 (compare: 1.192 s/chunk without, session 16)
      timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime.py -k "fp8_dit_close" 2>&1 | grep -v '^USDT:' | tail -3
      timeout 400 python3 bench/env_5b.py --chunks 3 --attention fa3_fp8 --eager-attention cudnn --compile --quantize fp8 \
        --fp8-ffn-kernel --compile-decoder --decode-segment 1 --against-eager --attention-tflops 931 \
        --json "$out/env_5b_fa3fp8_ffn_kernel_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    cudnn_bench)
      # issue 14, session 21: the fastest configuration with cuDNN timing its algorithms per convolution shape
      # (torch.backends.cudnn.benchmark; the env never set it, so the decoder's 3-D convolutions ran on heuristics'
      # choices: ~120 ms of convolutions at ~350 TFLOP/s in session 17's profile, against the 631-735 a conv3d
      # reached in bench/vae.py with it on); compare: 1.174 s/chunk without (session 21), the GPU tests of the
      # CUDA-graph option first
      timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime.py -k "cuda_graphs" 2>&1 | grep -v '^USDT:' | tail -3
      timeout 400 python3 bench/env_5b.py --chunks 3 --attention fa3_fp8 --compile --quantize fp8 --fp8-ffn-kernel \
        --compile-decoder --decode-segment 1 --cudnn-benchmark --attention-tflops 931 \
        --json "$out/env_5b_cudnn_benchmark_h200.json" 2>&1 | grep -v '^USDT:' | tail -6
      ;;
    fa3_bf16)
      timeout 450 python3 bench/env_5b.py --chunks 3 --attention fa3 --eager-attention cudnn --compile --quantize fp8 \
        --compile-decoder --decode-segment 1 --against-eager --attention-tflops 721 \
        --json "$out/env_5b_fastest_fa3_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    decode_compiled_seg1)
      timeout 300 python3 bench/env_5b.py --chunks 2 --attention cudnn --compile-decoder --decode-segment 1 --against-eager \
        --json "$out/env_5b_compiled_decoder_seg1_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    offload)
      timeout 150 python3 bench/env_5b.py --chunks 2 --attention cudnn --text-offload \
        --json "$out/env_5b_text_offload_h200.json" 2>&1 | grep -v '^USDT:' | tail -6
      ;;
    gputests)
      timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_vae.py \
        tests/test_runtime.py tests/test_text.py 2>&1 | grep -v '^USDT:' | tee "$out/gputests_h200.log" | tail -8
      ;;
    fa3_qk)
      # issue 14, session 18's kernels: the fastest configuration (fa3_ffn) with the self-attentions' q/k norm + RoPE +
      # FP8 in one Triton pass and v's per-head amax reduced heads first (RuntimeOptions.fp8_attention_kernel); its
      # tests first (compare: 1.173 s/chunk without, session 17)
      timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_fp8_attention.py 2>&1 | grep -v '^USDT:' | tail -3
      timeout 400 python3 bench/env_5b.py --chunks 3 --attention fa3_fp8 --eager-attention cudnn --compile --quantize fp8 \
        --fp8-ffn-kernel --fp8-attention-kernel --compile-decoder --decode-segment 1 --against-eager --attention-tflops 931 \
        --json "$out/env_5b_fa3fp8_qk_kernel_h200.json" 2>&1 | grep -v '^USDT:' | tail -8
      ;;
    *) echo "unknown step $step (precision, rollouts, play, play_compiled, profile, decode, decode_compiled, decode_compiled_seg1, fastest, fastest_seg1, fa3, fa3_bf16, fa3_profile, fp8_rows, fa3_ffn, fa3_qk, cudnn_bench, profile_fastest, offload, gputests)" >&2; exit 2 ;;
  esac
done
