import re, sys
s = open(sys.argv[1]).read()
s = s.replace('#include <cuda_runtime.h>\n', '')
s = '#include "emu_core.h"\n' + s
s = s.replace('extern __shared__ float s_mem[];', 'float *s_mem = (float *)emu_dyn_shared_ptr;')
# NAME<<<CFG>>>(ARGS);  (ARGS balanced parens, may span lines); NAME may be a
# template-id with several arguments, k<uint32_t, T> (EMU_LAUNCH is variadic).
out, i = [], 0
pat = re.compile(r'([A-Za-z_][A-Za-z_0-9]*(?:<[A-Za-z_0-9:]+(?:\s*,\s*[A-Za-z_0-9:]+)*>)?)<<<')
while True:
    m = pat.search(s, i)
    if not m: out.append(s[i:]); break
    out.append(s[i:m.start()])
    name = m.group(1)
    j = s.index('>>>', m.end())
    cfg = s[m.end():j]
    k = j + 3
    assert s[k] == '(', s[k:k+20]
    depth, e = 0, k
    while True:
        if s[e] == '(': depth += 1
        elif s[e] == ')':
            depth -= 1
            if depth == 0: break
        e += 1
    args = s[k+1:e]
    out.append('EMU_LAUNCH((%s), %s(%s))' % (cfg, name, args))
    i = e + 1
s = ''.join(out)
assert '<<<' not in s
open(sys.argv[2], 'w').write(s)
