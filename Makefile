# mfres: GNU Make build. `make` builds build/mfres and build/libmfres.a;
# `make test` installs missing dependencies, builds and runs every test.
CC ?= cc
OPT ?= -O3 -march=native
CFLAGS := -std=c11 -Wall -Wextra -Werror -g $(OPT) -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -MMD -MP $(EXTRA_CFLAGS)
LDLIBS := -ldnnl -lopenblas -llapacke -lz -lsqlite3 -lm -lpthread
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)
# MPI (data-parallel training, src/dist/mpi.c) when mpicc is found and MFRES_NO_MPI is unset;
# without it the single-process backend alone is built.
MPICC_FOUND := $(if $(MFRES_NO_MPI),,$(shell command -v mpicc 2>/dev/null))
MPI_CFLAGS := $(if $(MPICC_FOUND),$(patsubst -I%,-isystem %,$(shell mpicc --showme:compile 2>/dev/null || pkg-config --cflags mpi 2>/dev/null)))
MPI_LIBS := $(if $(MPICC_FOUND),$(shell mpicc --showme:link 2>/dev/null || pkg-config --libs mpi 2>/dev/null))
MPI_STATE := $(if $(MPI_LIBS),mpi,nompi)
LDLIBS += $(MPI_LIBS)
# CUDA (the GPU backend, src/gpu; docs/GPU.md) when nvcc, cuDNN and cuBLAS are
# found and MFRES_NO_CUDA is unset; without it src/gpu/none.c answers
# --device cuda with a clear error. CUDA_ARCH: native code for the H100/H200
# (sm_90) and the A100 (sm_80), and PTX that newer GPUs compile at load time.
NVCC_FOUND := $(if $(MFRES_NO_CUDA),,$(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc)))
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC_FOUND))
# cuDNN beside the toolkit, or where CUDNN_HOME says (pip's nvidia-cudnn-cu13:
# CUDNN_HOME=.../site-packages/nvidia/cudnn, which has no unversioned libcudnn.so).
CUDNN_HOME ?= $(CUDA_HOME)
CUDNN_LIBDIR := $(firstword $(wildcard $(CUDNN_HOME)/lib64/libcudnn.so* $(CUDNN_HOME)/lib/libcudnn.so*))
CUDNN_LIBDIR := $(patsubst %/,%,$(dir $(CUDNN_LIBDIR)))
CUDA_OK := $(if $(NVCC_FOUND),$(and $(wildcard $(CUDNN_HOME)/include/cudnn.h),$(CUDNN_LIBDIR),$(wildcard $(CUDA_HOME)/include/cublas_v2.h)))
CUDA_STATE := $(if $(CUDA_OK),cuda,nocuda)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]
NVCCFLAGS := -std=c++17 -O3 -g -lineinfo $(CUDA_ARCH) -Iinclude -Isrc -Xcompiler -Wall,-Wextra,-Werror,-fPIC -MMD -MP
CUDA_CFLAGS := $(if $(CUDA_OK),$(if $(filter-out $(CUDA_HOME),$(CUDNN_HOME)),-isystem $(CUDNN_HOME)/include) -isystem $(CUDA_HOME)/include)
TEST_CFLAGS := $(if $(CUDA_OK),-DMFRES_HAVE_CUDA $(CUDA_CFLAGS))
CUDNN_LIB := $(if $(wildcard $(CUDNN_LIBDIR)/libcudnn.so),-lcudnn,-l:libcudnn.so.9)
CUDA_LIBS := -L$(CUDNN_LIBDIR) -Wl,-rpath,$(CUDNN_LIBDIR) -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
  $(CUDNN_LIB) -lcublas -lcudart -lstdc++
LDLIBS += $(if $(CUDA_OK),$(CUDA_LIBS))

BUILD := build
GPU_SRC := $(if $(CUDA_OK),$(filter-out src/gpu/none.c,$(wildcard src/gpu/*.c)),src/gpu/none.c)
CU_SRC := $(if $(CUDA_OK),$(sort $(wildcard src/gpu/*.cu)))
LIB_SRC := $(sort $(filter-out $(if $(MPI_LIBS),,src/dist/mpi.c),$(shell find src -name '*.c' ! -path 'src/cli/*' ! -path 'src/gpu/*')) $(GPU_SRC))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%) $(BUILD)/tests/test_gpu_emulated $(BUILD)/tests/test_gpu_bf16_wide \
  $(if $(CUDA_OK),$(BUILD)/tests/test_gpu_kernels_emulated $(BUILD)/tests/test_gpu_model_simt)
TOOL_SRC := $(sort $(wildcard tests/tools/*.c))
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)
BENCH_BIN := $(BUILD)/tools/allreduce_bench

.PHONY: all test run setup features clean bench check-sanitize fuzz check-fuzz install
all: features $(BUILD)/mfres $(BUILD)/libmfres.a

# Feature detection, printed as a checklist (the build needs the first five).
features:
	@printf 'mfres features:\n'
	@for h in oneapi/dnnl/dnnl.h:oneDNN cblas.h:CBLAS lapacke.h:LAPACKE zlib.h:zlib sqlite3.h:SQLite check.h:Check; do \
	  f=$${h%%:*}; n=$${h##*:}; \
	  if echo "#include <$$f>" | $(CC) -E -x c - >/dev/null 2>&1; then printf '  \342\234\223 %s\n' "$$n"; else printf '  \342\234\227 %s\n' "$$n"; fi; done
	@if [ $(CUDA_STATE) = cuda ]; then printf '  \342\234\223 CUDA backend (--device cuda; cuDNN, cuBLAS from %s)\n' '$(CUDA_HOME)'; \
	 else printf '  \342\234\227 CUDA backend (%s; CPU only)\n' '$(if $(MFRES_NO_CUDA),MFRES_NO_CUDA set,$(if $(NVCC_FOUND),cuDNN or cuBLAS not found: set CUDNN_HOME or CUDA_HOME,nvcc not found))'; fi
	@if [ $(MPI_STATE) = mpi ]; then printf '  \342\234\223 MPI (data-parallel training: mpirun -np N mfres train)\n'; else printf '  \342\234\227 MPI (single process only)\n'; fi
	@if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then printf '  \342\234\223 PyTorch reference tests\n'; else printf '  \342\234\227 PyTorch reference tests\n'; fi
	@if command -v gnuplot >/dev/null 2>&1; then printf '  \342\234\223 gnuplot plots\n'; else printf '  \342\234\227 gnuplot plots (CSV only)\n'; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/src/gpu/%.o: CFLAGS += $(CUDA_CFLAGS)
$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC_FOUND) $(NVCCFLAGS) -c $< -o $@

# src/dist is compiled for the MPI state of this build; the stamp rebuilds it when that changes.
$(BUILD)/src/dist/dist.o $(BUILD)/src/dist/mpi.o: CFLAGS += $(if $(MPI_LIBS),-DMFRES_HAVE_MPI $(MPI_CFLAGS))
$(BUILD)/src/dist/dist.o: $(BUILD)/.dist-$(MPI_STATE)
$(BUILD)/.dist-%:
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.dist-* && touch $@

$(BUILD)/libmfres.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/mfres: $(CLI_OBJ) $(BUILD)/libmfres.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmfres.a tests/testutil.h tests/model_fixture.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(TEST_CFLAGS) -Itests -o $@ $< $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

# The GPU plan's own logic on the CPU: src/gpu's plan files against tests/gpu_emu
# (the CUDA runtime, cuDNN, cuBLAS and kernels.h restated in plain C), with
# test_gpu_model's cases. Built the same way with or without CUDA.
EMU_SRC := src/gpu/cuda_plan.c src/gpu/cuda_block_postact.c src/gpu/cuda_block_preact.c tests/gpu_emu/emu.c tests/gpu_emu/dnn_ref.c \
  tests/gpu_emu/device_emu.c \
  tests/gpu_emu/kernels_host.c
$(BUILD)/tests/test_gpu_emulated: tests/test_gpu_model.c $(EMU_SRC) $(wildcard tests/gpu_emu/*.h src/gpu/*.h) \
  $(BUILD)/libmfres.a tests/testutil.h tests/model_fixture.h
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -DMFRES_GPU_EMULATED -Itests/gpu_emu -Itests -o $@ tests/test_gpu_model.c \
	  $(EMU_SRC) $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

# The same with bfloat16 stored as float (kernels.h's MFRES_GPU_BF16_WIDE): the bf16
# plan's logic held to fp32's tolerances.
$(BUILD)/tests/test_gpu_bf16_wide: tests/test_gpu_model.c $(EMU_SRC) $(wildcard tests/gpu_emu/*.h src/gpu/*.h) \
  $(BUILD)/libmfres.a tests/testutil.h tests/model_fixture.h
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -DMFRES_GPU_EMULATED -DMFRES_GPU_BF16_WIDE -Itests/gpu_emu -Itests -o $@ \
	  tests/test_gpu_model.c $(EMU_SRC) $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

# The kernels themselves on the CPU (builds with the CUDA headers): tests/gpu_simt
# runs kernels.cu's CUDA C++ thread by thread, with block barriers, warp shuffles
# and graph capture (transform.py rewrites only its <<<...>>> launches), so that
# test_gpu_kernels' cases run on machines without a GPU, CI's included.
SIMT := $(BUILD)/gpu_simt
SIMT_CXXFLAGS := -std=c++17 -O2 -g -ffp-contract=off -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/gpu_simt -Iinclude -Isrc $(CUDA_CFLAGS)
$(SIMT)/kernels_emu.cpp: src/gpu/kernels.cu tests/gpu_simt/transform.py
	@mkdir -p $(SIMT)
	python3 tests/gpu_simt/transform.py $< $@
$(SIMT)/kernels_emu.o: $(SIMT)/kernels_emu.cpp tests/gpu_simt/emu_core.h src/gpu/kernels.h
	$(CXX) $(SIMT_CXXFLAGS) -c $< -o $@
$(SIMT)/emu_rt.o: tests/gpu_simt/emu_rt.cpp tests/gpu_simt/emu_core.h
	@mkdir -p $(SIMT)
	$(CXX) $(SIMT_CXXFLAGS) -c $< -o $@
$(BUILD)/tests/test_gpu_kernels_emulated: tests/test_gpu_kernels.c $(SIMT)/kernels_emu.o $(SIMT)/emu_rt.o \
  $(BUILD)/libmfres.a tests/testutil.h tests/model_fixture.h
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(TEST_CFLAGS) -DMFRES_GPU_EMULATED -Itests -o $@ $< $(SIMT)/kernels_emu.o \
	  $(SIMT)/emu_rt.o $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

# The plan, kernels.cu and CUDA graphs together on the SIMT emulator: test_gpu_model's
# cases with cuDNN and cuBLAS as tests/gpu_simt/libs_emu.c's enqueued loops.
SIMT_PLAN_SRC := src/gpu/cuda_plan.c src/gpu/cuda_block_postact.c src/gpu/cuda_block_preact.c \
  tests/gpu_simt/libs_emu.c tests/gpu_emu/dnn_ref.c tests/gpu_emu/device_emu.c
$(BUILD)/tests/test_gpu_model_simt: tests/test_gpu_model.c $(SIMT_PLAN_SRC) $(SIMT)/kernels_emu.o $(SIMT)/emu_rt.o \
  $(wildcard src/gpu/*.h) $(BUILD)/libmfres.a tests/testutil.h tests/model_fixture.h
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(CUDA_CFLAGS) -DMFRES_GPU_SIMT -Itests -o $@ $< $(SIMT_PLAN_SRC) \
	  $(SIMT)/kernels_emu.o $(SIMT)/emu_rt.o $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/tools/%: bench/%.c $(BUILD)/libmfres.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmfres.a $(LDLIBS)

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libmfres.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libmfres.a $(LDLIBS)

setup:
	@bash scripts/setup.sh

# The build, and the test binaries (tests/run_tests.sh), use every core (README,
# Tests, has the times); a -j given on the command line wins.
test: setup
	@$(MAKE) --no-print-directory $(if $(filter -j%,$(MAKEFLAGS)),,-j$(shell nproc)) all $(TEST_BIN) $(TOOL_BIN)
	@bash tests/run_tests.sh

# The default job: ResNet-20, mean-field training, Fashion-MNIST, short schedule.
# --overwrite: `make run` again starts the default run over (a plain `mfres train`
# refuses a directory that holds a run).
run: setup
	@$(MAKE) --no-print-directory all
	./$(BUILD)/mfres train --overwrite

bench: all $(BENCH_BIN)
	bash bench/compare_pytorch.sh

clean:
	rm -rf $(BUILD) build-sanitize build-fuzz

# ---- CI hardening: sanitizers and fuzzing (each in a build directory of its own) ----
# `make check-sanitize`: the library, CLI and the file-format and data tests built
# with ASan+UBSan, then those tests and a short train/resume/eval run
# (scripts/check_sanitize.sh says which and why not all). Built without
# -march=native, so CI also proves the portable build (make OPT=-O2) compiles.
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
check-sanitize:
	@$(MAKE) --no-print-directory BUILD=build-sanitize OPT="-O1" EXTRA_CFLAGS="$(SAN_FLAGS)" MFRES_NO_CUDA=1 \
	  build-sanitize/mfres build-sanitize/tests/test_formats build-sanitize/tests/test_io build-sanitize/tests/test_data
	@bash scripts/check_sanitize.sh build-sanitize

# `make check-fuzz`: libFuzzer (Debian's clang) on each parser for FUZZ_SECONDS
# seconds, starting from the corpus in tests/fuzz/corpus; what it finds new goes
# to build-fuzz/corpus-NAME, never into the tree. A longer hunt:
#   make check-fuzz FUZZ_SECONDS=3600
FUZZ_TARGETS := idx cifar safetensors npy csv
FUZZ_SECONDS ?= 10
FUZZ_LIB_SRC := src/core/error.c src/core/sys.c src/core/safetensors.c src/core/npy.c src/data/idx.c \
  src/data/cifar.c src/data/data.c
fuzz: $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_LIB_SRC) $(wildcard include/mfres/*.h)
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -Iinclude -Isrc $(SAN_FLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_SRC) -lz -lm
check-fuzz: fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus-$$t; \
	  printf 'fuzz %-12s %s s: ' $$t $(FUZZ_SECONDS); \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build-fuzz/$$t- \
	    build-fuzz/corpus-$$t tests/fuzz/corpus/$$t > build-fuzz/fuzz_$$t.log 2>&1 \
	    || { echo FAIL; tail -40 build-fuzz/fuzz_$$t.log; exit 1; }; \
	  grep -m1 'stat::number_of_executed_units' build-fuzz/fuzz_$$t.log | sed 's/.*: *//; s/$$/ runs, no crash/'; \
	done

# ---- installing: make install PREFIX=/opt/mfres (DESTDIR for staged installs) ----
PREFIX ?= /usr/local
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/mfres \
	  $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BUILD)/mfres $(DESTDIR)$(PREFIX)/bin/mfres
	install -m 644 $(BUILD)/libmfres.a $(DESTDIR)$(PREFIX)/lib/libmfres.a
	install -m 644 include/mfres/*.h $(DESTDIR)$(PREFIX)/include/mfres/
	install -m 644 docs/mfres.1 $(DESTDIR)$(PREFIX)/share/man/man1/mfres.1
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@CUDA_LIBS@|$(if $(CUDA_OK),$(CUDA_LIBS))|' mfres.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/mfres.pc

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
