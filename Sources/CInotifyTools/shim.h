// libinotifytools (Debian: libinotifytools0-dev, which ships no pkg-config file).
// Only CairnWatch may import this module: the library keeps global state and must be
// called from one thread (see Sources/CairnWatch/Watcher.swift).
#include <sys/inotify.h>
#include <inotifytools/inotifytools.h>
