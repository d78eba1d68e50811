set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e3_learning_rate.png'
set grid
set key outside right
set title 'Test accuracy after a fixed number of steps, 3x100 ReLU, batch 60, 5 seeds'
set xlabel 'learning rate (momentum 0.9)'; set ylabel 'test accuracy (mean, sd)'
set logscale x; set yrange [0:1]
set datafile missing 'nan'
plot 'e3.dat' u 1:2:3 w yerrorlines lw 2 t 'no layer', '' u 1:4:5 w yerrorlines lw 2 t 'affine gamma*x+beta', '' u 1:6:7 w yerrorlines lw 2 t 'batch norm', 0.5 dt 2 lc 'gray' t 'trains (50%)'
