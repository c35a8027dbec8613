#!/usr/bin/env bash
# The Table 1 networks on the command line: model names and block kinds that do
# not fit are refused (exit 2, naming the flag and the valid choices); a small
# bottleneck ResNet and a small ResNeXt train, save a model file that eval
# reads back to the same test accuracy; and none of their convolutions runs on
# oneDNN's reference kernel (grouped and 1x1 included), native and AVX2.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
. tests/lib.sh  # tmp, fails, check, expect_exit (the cd above put us at the top)

expect_exit 2 "unknown model" "resnext29-8x64d" $MFRES train --model vgg16
expect_exit 2 "malformed ResNeXt name" "resnextN-CxDd" $MFRES train --model resnext29-8x
expect_exit 2 "bottleneck depth not 9n+2" "9n+2" $MFRES train --model resnet50 --block bottleneck
expect_exit 2 "basic depth 9n+2 only: points at the bottleneck" "use --block bottleneck" $MFRES train --model resnet47
expect_exit 2 "ResNeXt has no --block bottleneck" "postact or preact" \
  $MFRES train --model resnext29-8x64d --block bottleneck
expect_exit 2 "ResNeXt depth not 9n+2" "9n+2" $MFRES bench --model resnext30-8x64d
expect_exit 2 "bad block name lists the kinds" "bottleneck" $MFRES bench --block wide

# Train, save, evaluate: ResNet-20 bottleneck (two blocks a stage: one particle) and ResNeXt-11 2x8d, both forms.
common=(--batch 32 --train-limit 256 --test-limit 128 --epochs 1 --threads 2 --quiet)
for net in "--model resnet20 --block bottleneck" "--model resnext11-2x8d --width 16 --block postact" \
           "--model resnext11-2x8d --width 16 --block preact"; do
  tag=$(echo "$net" | tr -c 'a-z0-9\n' '_')
  # shellcheck disable=SC2086
  $MFRES train $net "${common[@]}" --out "$tmp/$tag" > "$tmp/$tag.txt" 2>&1
  acc_train=$(sed -n -E 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/$tag.txt")
  $MFRES eval --model-file "$tmp/$tag/model.safetensors" --batch 32 --limit 128 --threads 2 > "$tmp/eval.txt" 2>&1
  acc_eval=$(sed -n -E 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/eval.txt")
  awk -v a="${acc_train:-x}" -v b="${acc_eval:-y}" 'BEGIN { exit !(a != "x" && b != "y" && a - b < 1e-4 && b - a < 1e-4) }'
  check "$net: trains, and eval of its model file gives its test accuracy (${acc_train:-none} vs ${acc_eval:-none})" $?
done

for isa in "" AVX2; do
  for net in "--model resnet11 --block bottleneck" "--model resnext11-2x16d --width 16 --block preact"; do
    # shellcheck disable=SC2086
    DNNL_MAX_CPU_ISA=$isa $MFRES bench $net --input 3x32x32 --batch 16 --iters 1 --warmup 0 --threads 2 --profile \
      > "$tmp/prof.txt" 2>&1
    ! grep -q " ref:" "$tmp/prof.txt" && grep -q "conv bwd weights (projection)" "$tmp/prof.txt"
    r=$?; check "no reference kernels (${isa:-native}, $net)$(grep -m1 " ref:" "$tmp/prof.txt" | tr -s ' ')" $r
  done
done

echo "$fails failures"
[ "$fails" -eq 0 ]
