/* check.h: what the shim's C test programs share. A program defines
 * PROG (its name in messages) before including this, and sets dir (the
 * directory on the mount it works in) before calling at(). */
#ifndef SLUICE_TEST_SHIM_CHECK_H
#define SLUICE_TEST_SHIM_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static const char *dir;

/* CHECK fails the program with the line, a message and errno. */
#define CHECK(cond, ...)                                            \
	do {                                                        \
		if (!(cond)) {                                      \
			fprintf(stderr, PROG ": line %d: ", __LINE__); \
			fprintf(stderr, __VA_ARGS__);               \
			fprintf(stderr, " (errno %d)\n", errno);    \
			exit(1);                                    \
		}                                                   \
	} while (0)

/* at returns dir/name; the last four results stay valid. */
static char *at(const char *name) {
	static char p[4][4096];
	static int i;
	i = (i + 1) % 4;
	snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
	return p[i];
}

#endif
