package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed lets flags follow positional arguments, as in
// `sluice volume create db --tenant acme --size 10G`: urfave/cli v2 stops
// parsing flags at the first positional argument, so this moves every flag
// of the selected command in front of its positional arguments. It also
// moves the global flags (--api-socket, --json) given before a client
// command to that command, which declares them too (prepareCommands): a
// flag is read from the innermost command that declares it, so there they
// count wherever they were written. Everything after "--" is left alone.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	head, leaf, i := commandPath(app, args)
	client := leaf != nil && !daemons[head[firstCommand(head)].words[0]]
	out := []string{args[0]}
	var fl, pos []string
	for _, h := range head {
		if h.flag && client && isGlobal(h.words[0]) && hasFlag(leaf.Flags, flagName(h.words[0])) {
			fl = append(fl, h.words...)
			continue
		}
		out = append(out, h.words...)
	}
	flags := app.Flags
	if leaf != nil {
		flags = leaf.Flags
	}
	for ; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && a != "-":
			if takesValue(flags, a) && i+1 == len(args) {
				// Its value is missing: put it last, alone, so that
				// it is reported as such instead of taking a
				// positional argument as its value.
				return append(append(out, fl...), a)
			}
			fl = append(fl, a)
			if takesValue(flags, a) {
				fl = append(fl, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return append(append(out, fl...), pos...)
}

// word is a command name or a flag with its value, in the command path.
type word struct {
	words []string
	flag  bool
}

// commandPath walks the command names at the start of args (flags may sit
// between them). It returns them with those flags, the innermost command
// (nil: none) and the index of the first argument after the path.
func commandPath(app *cli.App, args []string) ([]word, *cli.Command, int) {
	var head []word
	var leaf *cli.Command
	cmds, flags := app.Commands, app.Flags
	i := 1
	for i < len(args) {
		a := args[i]
		if a == "--" {
			break
		}
		if strings.HasPrefix(a, "-") {
			w := word{words: []string{a}, flag: true}
			if takesValue(flags, a) && i+1 < len(args) {
				w.words = append(w.words, args[i+1])
				i++
			}
			head = append(head, w)
			i++
			continue
		}
		c := findCommand(cmds, a)
		if c == nil {
			break
		}
		head = append(head, word{words: []string{a}})
		leaf, cmds, flags = c, c.Subcommands, c.Flags
		i++
		if len(cmds) == 0 {
			break
		}
	}
	return head, leaf, i
}

// firstCommand is the index of the first command name in head.
func firstCommand(head []word) int {
	for i, w := range head {
		if !w.flag {
			return i
		}
	}
	return -1
}

func isGlobal(tok string) bool {
	for _, g := range globalFlags {
		if flagName(tok) == g {
			return true
		}
	}
	return false
}

// flagName is the name in a flag token: "--api-socket=X" → "api-socket".
func flagName(tok string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(tok, "-"), "=")
	return name
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the flag token consumes the next argument.
func takesValue(flags []cli.Flag, tok string) bool {
	name := strings.TrimLeft(tok, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if _, ok := f.(*cli.BoolFlag); ok {
				return false
			}
			return name != "help" && name != "h"
		}
	}
	return false
}
