# mfres: GNU Make build. `make` builds build/mfres and build/libmfres.a;
# `make test` installs missing dependencies, builds and runs every test.
CC ?= cc
OPT ?= -O3 -march=native
CFLAGS := -std=c11 -Wall -Wextra -Werror -g $(OPT) -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -MMD -MP $(EXTRA_CFLAGS)
LDLIBS := -ldnnl -lopenblas -llapacke -lz -lsqlite3 -lm -lpthread
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)

BUILD := build
LIB_SRC := $(sort $(shell find src -name '*.c' ! -path 'src/cli/*'))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOL_SRC := $(sort $(wildcard tests/tools/*.c))
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)

.PHONY: all test run setup features clean bench
all: features $(BUILD)/mfres $(BUILD)/libmfres.a

# Feature detection, printed as a checklist (the build needs the first five).
features:
	@printf 'mfres features:\n'
	@for h in oneapi/dnnl/dnnl.h:oneDNN cblas.h:CBLAS lapacke.h:LAPACKE zlib.h:zlib sqlite3.h:SQLite check.h:Check; do \
	  f=$${h%%:*}; n=$${h##*:}; \
	  if echo "#include <$$f>" | $(CC) -E -x c - >/dev/null 2>&1; then printf '  \342\234\223 %s\n' "$$n"; else printf '  \342\234\227 %s\n' "$$n"; fi; done
	@if [ -x /usr/local/cuda/bin/nvcc ]; then printf '  \342\234\223 CUDA toolkit (GPU backend not built yet)\n'; else printf '  \342\234\227 CUDA toolkit\n'; fi
	@if command -v mpicc >/dev/null 2>&1; then printf '  \342\234\223 MPI (not used yet)\n'; else printf '  \342\234\227 MPI\n'; fi
	@if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then printf '  \342\234\223 PyTorch reference tests\n'; else printf '  \342\234\227 PyTorch reference tests\n'; fi
	@if command -v gnuplot >/dev/null 2>&1; then printf '  \342\234\223 gnuplot plots\n'; else printf '  \342\234\227 gnuplot plots (CSV only)\n'; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmfres.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/mfres: $(CLI_OBJ) $(BUILD)/libmfres.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmfres.a tests/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libmfres.a $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libmfres.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libmfres.a $(LDLIBS)

setup:
	@bash scripts/setup.sh

test: setup
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TOOL_BIN)
	@bash tests/run_tests.sh

# The default job: ResNet-20, mean-field training, Fashion-MNIST, short schedule.
run: setup
	@$(MAKE) --no-print-directory all
	./$(BUILD)/mfres train

bench: all
	bash bench/compare_pytorch.sh

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
