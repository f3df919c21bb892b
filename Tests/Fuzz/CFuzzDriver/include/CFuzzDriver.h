#ifndef CFUZZDRIVER_H
#define CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver (compiler-rt), linked only into the fuzz build (-sanitize=fuzzer):
// cairn-fuzz's own main calls it, because SwiftPM points `main` at the executable
// module's entry point, never at libFuzzer's.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));

#endif
