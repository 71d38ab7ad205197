/* libsluice-shim: the interposed libc entry points. Each looks the fd
 * up; an fd the library does not serve goes straight to the kernel with
 * the raw system call (the library calls no libc function it interposes).
 * Every glibc spelling of a call is its own symbol: the LFS *64 names,
 * _FORTIFY_SOURCE's __*_chk, and the __fxstat family that binaries built
 * before glibc 2.33 call instead of fstat. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void __chk_fail(void) __attribute__((noreturn));

/* ret turns a shim answer (>= 0 or -errno) into libc's. */
static long ret(int64_t r) {
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (long)r;
}

/* ---- open: nothing to remember, but a new fd number forgets the old ---- */

static int opened(long fd) {
	if (fd >= 0)
		shim_opened((int)fd);
	return (int)fd;
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode) {
	return opened(shim_raw(SYS_openat, dirfd, (long)path, flags, mode));
}

#define MODE_ARG(flags)                                          \
	mode_t mode = 0;                                         \
	if ((flags) & (O_CREAT | __O_TMPFILE)) {                 \
		va_list ap;                                      \
		va_start(ap, flags);                             \
		mode = va_arg(ap, mode_t);                       \
		va_end(ap);                                      \
	}

EXPORT int open(const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(dirfd, path, flags | O_LARGEFILE, mode);
}

/* _FORTIFY_SOURCE's spellings: a mode-less open that needs a mode is a bug. */
static void need_no_mode(int flags) {
	if (flags & (O_CREAT | __O_TMPFILE))
		__chk_fail();
}

EXPORT int __open_2(const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(dirfd, path, flags | O_LARGEFILE, 0);
}

EXPORT int creat(const char *path, mode_t mode) {
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

EXPORT int creat64(const char *path, mode_t mode) {
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_LARGEFILE, mode);
}

/* ---- close and the dup family ---- */

EXPORT int close(int fd) {
	shim_closing(fd);
	return (int)shim_raw(SYS_close, fd, 0, 0, 0);
}

EXPORT int close_range(unsigned int lo, unsigned int hi, int flags) {
	if (!(flags & CLOSE_RANGE_CLOEXEC))
		shim_closing_range((int)(lo > INT32_MAX ? INT32_MAX : lo), (int)(hi > INT32_MAX ? INT32_MAX : hi));
	return (int)shim_raw(SYS_close_range, lo, hi, flags, 0);
}

EXPORT void closefrom(int lo) {
	shim_closing_range(lo, INT32_MAX);
	if (shim_raw(SYS_close_range, lo, ~0U, 0, 0) < 0) {
		for (int fd = lo; fd < 65536; fd++)
			shim_raw(SYS_close, fd, 0, 0, 0);
	}
}

EXPORT int dup(int fd) { return opened(shim_raw(SYS_dup, fd, 0, 0, 0)); }

EXPORT int dup2(int old, int new) {
	if (old != new)
		shim_closing(new);
	if (old == new) /* dup2 checks old and does nothing; dup3 would fail */
		return (int)shim_raw(SYS_fcntl, old, F_GETFD, 0, 0) < 0 ? -1 : new;
	return opened(shim_raw(SYS_dup3, old, new, 0, 0));
}

EXPORT int dup3(int old, int new, int flags) {
	if (old != new)
		shim_closing(new);
	return opened(shim_raw(SYS_dup3, old, new, flags, 0));
}

static int do_fcntl(int fd, int cmd, long arg) {
	long r = shim_raw(SYS_fcntl, fd, cmd, arg, 0);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		opened(r);
	if (r >= 0 && cmd == F_SETFL)
		shim_setfl(fd, (int)arg);
	return (int)r;
}

EXPORT int fcntl(int fd, int cmd, ...) {
	va_list ap;
	va_start(ap, cmd);
	long arg = (long)va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
	va_list ap;
	va_start(ap, cmd);
	long arg = (long)va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

/* ---- data ---- */

EXPORT ssize_t read(int fd, void *buf, size_t n) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_read(CALL_read, fd, e, buf, n) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_read, fd, (long)buf, n, 0) : ret(r);
}

EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_read(CALL_read_chk, fd, e, buf, n) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_read, fd, (long)buf, n, 0) : ret(r);
}

EXPORT ssize_t write(int fd, const void *buf, size_t n) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_write(CALL_write, fd, e, buf, n) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_write, fd, (long)buf, n, 0) : ret(r);
}

static ssize_t do_pread(enum call call, int fd, void *buf, size_t n, off_t off) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_pread(call, fd, e, buf, n, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_pread64, fd, (long)buf, n, off) : ret(r);
}

EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) { return do_pread(CALL_pread, fd, buf, n, off); }
EXPORT ssize_t pread64(int fd, void *buf, size_t n, off64_t off) { return do_pread(CALL_pread64, fd, buf, n, off); }

EXPORT ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	return do_pread(CALL_pread_chk, fd, buf, n, off);
}

EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t n, off64_t off, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	return do_pread(CALL_pread64_chk, fd, buf, n, off);
}

static ssize_t do_pwrite(enum call call, int fd, const void *buf, size_t n, off_t off) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_pwrite(call, fd, e, buf, n, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_pwrite64, fd, (long)buf, n, off) : ret(r);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(CALL_pwrite, fd, buf, n, off); }
EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { return do_pwrite(CALL_pwrite64, fd, buf, n, off); }

/* lseek keeps the kernel's offset the truth; only SEEK_END asks the
 * gateway for the length. */
static off_t do_lseek(enum call call, int fd, off_t off, int whence) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && whence == SEEK_END ? shim_seek_end(call, fd, e, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_lseek, fd, off, whence, 0) : ret(r);
}

EXPORT off_t lseek(int fd, off_t off, int whence) { return do_lseek(CALL_lseek, fd, off, whence); }
EXPORT off64_t lseek64(int fd, off64_t off, int whence) { return do_lseek(CALL_lseek64, fd, off, whence); }

/* ---- sync, length, allocation ---- */

static int op(enum call call, int fd, uint32_t o, uint32_t arg, int64_t off, int64_t len, long nr, long a, long b, long c) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e ? shim_op(call, fd, e, o, arg, off, len) : SHIM_FALLBACK;
	return (int)(r == SHIM_FALLBACK ? shim_raw(nr, fd, a, b, c) : ret(r));
}

EXPORT int fsync(int fd) { return op(CALL_fsync, fd, OP_FSYNC, 0, 0, 0, SYS_fsync, 0, 0, 0); }
EXPORT int fdatasync(int fd) { return op(CALL_fdatasync, fd, OP_FDATASYNC, 0, 0, 0, SYS_fdatasync, 0, 0, 0); }

EXPORT int ftruncate(int fd, off_t len) {
	return op(CALL_ftruncate, fd, OP_FTRUNCATE, 0, 0, len, SYS_ftruncate, len, 0, 0);
}

EXPORT int ftruncate64(int fd, off64_t len) {
	return op(CALL_ftruncate64, fd, OP_FTRUNCATE, 0, 0, len, SYS_ftruncate, len, 0, 0);
}

EXPORT int fallocate(int fd, int mode, off_t off, off_t len) {
	return op(CALL_fallocate, fd, OP_FALLOCATE, (uint32_t)mode, off, len, SYS_fallocate, mode, off, len);
}

EXPORT int fallocate64(int fd, int mode, off64_t off, off64_t len) {
	return op(CALL_fallocate64, fd, OP_FALLOCATE, (uint32_t)mode, off, len, SYS_fallocate, mode, off, len);
}

/* posix_fallocate answers an error number, not -1 and errno. */
static int do_posix_fallocate(enum call call, int fd, off_t off, off_t len) {
	if (off < 0 || len <= 0)
		return EINVAL;
	int saved = errno;
	int r = op(call, fd, OP_FALLOCATE, 0, off, len, SYS_fallocate, 0, off, len);
	int e = r < 0 ? errno : 0;
	errno = saved;
	return e;
}

EXPORT int posix_fallocate(int fd, off_t off, off_t len) { return do_posix_fallocate(CALL_posix_fallocate, fd, off, len); }
EXPORT int posix_fallocate64(int fd, off64_t off, off64_t len) { return do_posix_fallocate(CALL_posix_fallocate64, fd, off, len); }

/* ---- fstat ---- */

static int do_fstat(enum call call, int fd, struct stat *st) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e ? shim_fstat(call, fd, e, st) : SHIM_FALLBACK;
	return (int)(r == SHIM_FALLBACK ? shim_raw(SYS_fstat, fd, (long)st, 0, 0) : ret(r));
}

/* On 64-bit Linux struct stat and struct stat64 are one layout, and the
 * kernel's. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "stat and stat64 share a layout");

EXPORT int fstat(int fd, struct stat *st) { return do_fstat(CALL_fstat, fd, st); }
EXPORT int fstat64(int fd, struct stat64 *st) { return do_fstat(CALL_fstat64, fd, (struct stat *)st); }
EXPORT int __fxstat(int ver, int fd, struct stat *st) {
	(void)ver;
	return do_fstat(CALL_fxstat, fd, st);
}
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) {
	(void)ver;
	return do_fstat(CALL_fxstat64, fd, (struct stat *)st);
}

/* ---- mmap: the fd's bypass ends (shim_mapping) ---- */

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
	if (fd >= 0 && !(flags & MAP_ANONYMOUS))
		shim_mapping(fd);
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
	return mmap(addr, len, prot, flags, fd, off);
}
