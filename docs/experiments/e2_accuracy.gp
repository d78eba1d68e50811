set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e2_accuracy.png'
set grid
set key outside right
set multiplot layout 1,2
set xlabel 'training step'
set title 'Test accuracy (probe set, eval mode)'
plot 'e2.dat' u 1:2 w l lw 2 t 'true', '' u 1:3 w l lw 2 t 'frozen moments'
set title 'Training loss'
set yrange [0:*]
plot 'e2.dat' u 1:4 w l lw 2 t 'true', '' u 1:5 w l lw 2 t 'frozen moments'
unset multiplot
