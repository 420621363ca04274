/* coordinator/commands.h: the e8q subcommands. Each lives in its own file
 * coordinator/cmd_<name>.c, parses its own options (with --help) and returns
 * the process exit code. MPI is initialised before and finalised after. */
#ifndef E8Q_COORDINATOR_COMMANDS_H
#define E8Q_COORDINATOR_COMMANDS_H

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
  const char *summary;
} e8q_command;

int cmd_inspect(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

/* the table, NULL-terminated (coordinator/commands.c) */
extern const e8q_command e8q_commands[];

int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);

#endif
