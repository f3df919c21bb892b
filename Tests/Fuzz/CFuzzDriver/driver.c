// Declarations only (include/CFuzzDriver.h); the definitions are libFuzzer's.
#include "CFuzzDriver.h"
