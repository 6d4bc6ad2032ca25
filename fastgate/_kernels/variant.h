/* One ISA's float and double instantiations of packed_step.h. fused.h defines, per ISA,
 *   FG_ISA_SUFFIX  the name suffix (base, avx2, avx512)
 *   FG_TARGET      the function attribute selecting the ISA (empty for the baseline)
 *   FG_VBYTES      the vector width in bytes, FG_ACC the tile's accumulators (constants.h)
 * and includes this file; it undefines them again. (No include guard: included per ISA.)
 */
#define FG_PASTE3(a, b, c) a##b##c
#define FG_PASTE(a, b, c) FG_PASTE3(a, b, c)

#define FG_T float
#define FG_ACTIVATE fg_activate_f
#define FG_NAME(x) FG_PASTE(x, _f_, FG_ISA_SUFFIX)
#include "packed_step.h"
#undef FG_T
#undef FG_ACTIVATE
#undef FG_NAME

#define FG_T double
#define FG_ACTIVATE fg_activate_d
#define FG_NAME(x) FG_PASTE(x, _d_, FG_ISA_SUFFIX)
#include "packed_step.h"
#undef FG_T
#undef FG_ACTIVATE
#undef FG_NAME

#undef FG_PASTE
#undef FG_PASTE3
#undef FG_ISA_SUFFIX
#undef FG_TARGET
#undef FG_VBYTES
#undef FG_ACC
