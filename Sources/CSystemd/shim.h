// libsystemd for Swift: sd_notify and the journal's non-variadic sd_journal_sendv.
#ifndef REVERSEHTTP_CSYSTEMD_SHIM_H
#define REVERSEHTTP_CSYSTEMD_SHIM_H
#include <sys/uio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#endif
